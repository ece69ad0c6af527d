package tree

import (
	"bytes"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// readXattrs returns all xattrs of p (not following a symlink), byte-exact,
// without overlayfs internals; nil when there are none.
func readXattrs(p string) (map[string][]byte, error) {
	names, err := ListXattrs(p)
	if err != nil {
		return nil, err
	}
	var out map[string][]byte
	for _, name := range names {
		if ignoredXattr(name) {
			continue
		}
		v, err := getXattr(p, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed between list and get
		}
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[name] = v
	}
	return out, nil
}

// ListXattrs lists the xattr names of p, not following symlinks, in the
// order the filesystem gives.
func ListXattrs(p string) ([]string, error) {
	for {
		n, err := unix.Llistxattr(p, nil)
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("llistxattr %q: %w", p, err)
		}
		if n == 0 {
			return nil, nil
		}
		buf := make([]byte, n)
		n, err = unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			continue // grew in between: ask again
		}
		if err != nil {
			return nil, fmt.Errorf("llistxattr %q: %w", p, err)
		}
		var names []string
		for _, b := range bytes.Split(buf[:n], []byte{0}) {
			if len(b) > 0 {
				names = append(names, string(b))
			}
		}
		return names, nil
	}
}

func getXattr(p, name string) ([]byte, error) {
	for {
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("lgetxattr %q %s: %w", p, name, err)
		}
		buf := make([]byte, n)
		n, err = unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("lgetxattr %q %s: %w", p, name, err)
		}
		return buf[:n], nil
	}
}
