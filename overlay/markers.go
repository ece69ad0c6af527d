package overlay

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Marker names and xattrs. Overlay writers disagree on how to mark things,
// so every variant is read; see DESIGN.md "On-disk layer dir format".
const (
	// WhiteoutPrefix marks an AUFS/OCI-style whiteout file ".wh.NAME".
	WhiteoutPrefix = ".wh."
	// OpaqueMarker is the AUFS/OCI opaque-directory file.
	OpaqueMarker = ".wh..wh..opq"

	XattrOverrideStat    = "user.containers.override_stat"
	xattrOverrideStatOld = "user.fuseoverlayfs.override_stat" // fuse-overlayfs <= 1.13
)

var opaqueXattrs = [...]string{"trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque"}

// Uppers written with these features keep data or names elsewhere than at
// the path (metacopy: data in a lower; redirect: a renamed dir's origin), so
// the upper alone does not describe the layer. BuildKit and containerd refuse
// them for the same reason.
var unsupportedXattrs = [...]string{
	"trusted.overlay.redirect", "user.overlay.redirect",
	"trusted.overlay.metacopy", "user.overlay.metacopy",
}

// xwhiteout xattrs (Linux 6.7+, composefs) turn a regular file into a whiteout.
var whiteoutXattrs = [...]string{"trusted.overlay.whiteout", "user.overlay.whiteout"}

// Markers written: every reader accepts each variant above, and every
// writer (the union, the layer-tar applier) writes these.

// WriteWhiteout makes path, relative to the directory open as dirfd, a
// whiteout: a 0:0 character device, which Linux lets anyone make since
// 5.8, or, where the process may not make one, a .wh.NAME file beside it.
// aufs says the file was written.
func WriteWhiteout(dirfd int, path string) (aufs bool, err error) {
	err = unix.Mknodat(dirfd, path, unix.S_IFCHR, 0)
	if err != unix.EPERM {
		return false, err
	}
	dir, name := Split(path)
	fd, err := unix.Openat(dirfd, Join(dir, WhiteoutPrefix+name), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return true, err
	}
	return true, unix.Close(fd)
}

// OpaqueXattr is the xattr that marks a directory opaque, set to
// OpaqueValue: the kernel's own, or for a process without
// CAP_SYS_ADMIN, which may not write trusted.*, the user.* name that
// overlayfs's userxattr mounts and containers/storage read.
func OpaqueXattr(rootless bool) string {
	if rootless {
		return opaqueXattrs[1]
	}
	return opaqueXattrs[0]
}

// OpaqueValue is the value OpaqueXattr is set to.
const OpaqueValue = "y"

// ErrUnsupportedUpper reports an upper that uses overlayfs redirect_dir or
// metacopy.
var ErrUnsupportedUpper = errors.New("upper uses overlayfs redirect_dir or metacopy, which a layer cannot express; mount with redirect_dir=off,metacopy=off")

// IsInternalXattr reports whether an xattr is union bookkeeping (markers,
// origins, ownership overrides) that must never reach the merged view or a
// layer.
func IsInternalXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") ||
		strings.HasPrefix(name, "user.overlay.") ||
		strings.HasPrefix(name, "user.fuseoverlayfs.") ||
		strings.HasPrefix(name, "security.fuseoverlayfs.") ||
		strings.HasPrefix(name, "user.containers.")
}

// IsWhiteoutDevice reports whether a stat result is the kernel's whiteout,
// a character device 0:0.
func IsWhiteoutDevice(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// IsReservedName reports whether a name is one that layer formats use for
// markers and that can therefore never be a real file.
func IsReservedName(name string) bool {
	return strings.HasPrefix(name, WhiteoutPrefix)
}

// readXattrNames lists the xattr names of a (not following symlinks).
func readXattrNames(a at) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := a.listxattr(buf)
		if err == unix.ERANGE {
			sz, err := a.listxattr(nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, sz+64)
			continue
		}
		if err == unix.ENOTSUP || err == unix.ENODATA {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
			if name != "" {
				names = append(names, name)
			}
		}
		return names, nil
	}
}

// readXattrs reads every xattr of a (not following symlinks). The raw
// map includes internal names; callers split them. Values of bookkeeping
// xattrs whose presence is all that matters are not read.
func readXattrs(a at) (map[string]string, error) {
	names, err := readXattrNames(a)
	if err != nil {
		return nil, fmt.Errorf("listxattr %s: %w", a, err)
	}
	if len(names) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(names))
	for _, name := range names {
		if IsInternalXattr(name) && !markerValueNeeded(name) {
			out[name] = "" // only its presence can matter (origin, impure, …)
			continue
		}
		v, err := getXattr(a, name)
		if err == unix.ENODATA {
			continue // removed between list and get
		}
		if err != nil {
			return nil, fmt.Errorf("getxattr %s %s: %w", a, name, err)
		}
		out[name] = v
	}
	return out, nil
}

func getXattr(a at, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := a.getxattr(name, buf)
		if err == unix.ERANGE {
			sz, err := a.getxattr(name, nil)
			if err != nil {
				return "", err
			}
			buf = make([]byte, sz+64)
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

// markerValueNeeded reports whether an internal xattr's value (not just
// its presence) means something to this package.
func markerValueNeeded(name string) bool {
	switch name {
	case XattrOverrideStat, xattrOverrideStatOld:
		return true
	}
	for _, n := range opaqueXattrs {
		if n == name {
			return true
		}
	}
	return false
}

// markers is what an object's raw xattrs say about it as a layer entry.
type markers struct {
	opaque      bool
	whiteout    bool // xwhiteout: a regular file marked as a whiteout
	unsupported string
	override    string
}

// splitXattrs separates the markers in raw from the xattrs that belong to
// the content. raw is modified.
func splitXattrs(raw map[string]string) (markers, map[string]string) {
	var mk markers
	if len(raw) == 0 {
		return mk, nil
	}
	for _, n := range opaqueXattrs {
		if raw[n] == "y" {
			mk.opaque = true
		}
	}
	for _, n := range whiteoutXattrs {
		if _, ok := raw[n]; ok {
			mk.whiteout = true
		}
	}
	for _, n := range unsupportedXattrs {
		if _, ok := raw[n]; ok {
			mk.unsupported = n
		}
	}
	if v, ok := raw[xattrOverrideStatOld]; ok {
		mk.override = v
	}
	if v, ok := raw[XattrOverrideStat]; ok {
		mk.override = v
	}
	for n := range raw {
		if IsInternalXattr(n) {
			delete(raw, n)
		}
	}
	if len(raw) == 0 {
		raw = nil
	}
	return mk, raw
}
