package layers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/overlay"
)

// copyInto copies the items into mnt, a mounted union, skipping every
// path the union already holds, as the Yocto class does: a directories or
// files layer adds only what the layers below lack. Writing through the
// union, rather than into the upper, lets the union copy up the parents
// it must change with their metadata.
//
// The union holds the layers below, which may come from a hostile base
// image, and this runs as root outside any sandbox: every destination
// path is resolved with os.Root, so that no symlink in the image (such as
// /var/run -> ../run, or a planted /opt -> /etc) can send a write to the
// host. Links that stay inside the image are followed, as a copy into
// the image would; absolute ones used as a parent are refused.
func copyInto(ctx context.Context, mnt string, items []copyItem) error {
	root, err := os.OpenRoot(mnt)
	if err != nil {
		return err
	}
	defer root.Close()
	c := &copier{ctx: ctx, root: root, links: map[[2]uint64]string{}}
	for _, it := range items {
		rel := strings.Trim(it.dst, "/")
		if err := c.parents(it, rel); err != nil {
			return err
		}
		if err := c.tree(it.src, rel); err != nil {
			return err
		}
	}
	// Directories get their times once nothing more is made in them;
	// children were made after their parents, so they go first here.
	for i := len(c.dirs) - 1; i >= 0; i-- {
		d := c.dirs[i]
		if err := c.at(d.rel, func(pfd int, base string) error { return setTimes(pfd, base, &d.st) }); err != nil {
			return err
		}
	}
	return nil
}

type copier struct {
	ctx   context.Context
	root  *os.Root
	links map[[2]uint64]string // source (dev, ino) → first copy, for hardlinks
	dirs  []madeDir
}

type madeDir struct {
	rel string
	st  unix.Stat_t
}

// at runs op on the object rel by its name in its parent directory,
// opened through the root.
func (c *copier) at(rel string, op func(pfd int, base string) error) error {
	dir, base := path.Split(rel)
	if dir = strings.TrimSuffix(dir, "/"); dir == "" {
		dir = "."
	}
	pf, err := c.root.Open(dir)
	if err != nil {
		return err
	}
	defer pf.Close()
	return op(int(pf.Fd()), base)
}

// parents creates the missing parents of an item: with the source
// rootfs's metadata where the item comes from one, else root-owned 0755.
func (c *copier) parents(it copyItem, rel string) error {
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		p := strings.Join(parts[:i], "/")
		if _, err := c.root.Lstat(p); err == nil {
			continue
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("/%s: %w", p, err)
		}
		if it.fromRootfs != "" {
			if err := c.one(filepath.Join(it.fromRootfs, p), p); err != nil {
				return err
			}
			continue
		}
		if err := c.root.Mkdir(p, 0o755); err != nil {
			return fmt.Errorf("/%s: %w", p, err)
		}
	}
	return nil
}

// tree copies src to rel, recursively; names the image already holds are
// kept.
func (c *copier) tree(src, rel string) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	st, err := os.Lstat(src)
	if err != nil {
		return err
	}
	dt, err := c.root.Lstat(rel)
	switch {
	case err == nil && !(st.IsDir() && dt.IsDir()):
		return nil // the layers below hold it
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("/%s: %w", rel, err)
	case err != nil:
		if err := c.one(src, rel); err != nil {
			return err
		}
	}
	if !st.IsDir() {
		return nil
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := c.tree(filepath.Join(src, e.Name()), rel+"/"+e.Name()); err != nil {
			return err
		}
	}
	return nil
}

// one copies a single object with its metadata and the xattrs a layer
// carries.
func (c *copier) one(src, rel string) error {
	e, err := overlay.Stat(src)
	if err != nil {
		return err
	}
	m := e.Meta
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return err
	}
	if m.Type == overlay.TypeReg && st.Nlink > 1 {
		id := [2]uint64{st.Dev, st.Ino}
		if first, ok := c.links[id]; ok {
			if err := c.root.Link(first, rel); err != nil {
				return fmt.Errorf("copy %s to /%s: %w", src, rel, err)
			}
			return nil
		}
		c.links[id] = rel
	}
	err = c.at(rel, func(pfd int, base string) error {
		switch m.Type {
		case overlay.TypeDir:
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				return err
			}
		case overlay.TypeReg:
			if err := copyFileAt(src, pfd, base); err != nil {
				return err
			}
		case overlay.TypeSymlink:
			if err := unix.Symlinkat(m.Link, pfd, base); err != nil {
				return err
			}
		case overlay.TypeChar, overlay.TypeBlock, overlay.TypeFifo:
			if err := unix.Mknodat(pfd, base, st.Mode, int(st.Rdev)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("cannot copy a %s", m.Type)
		}
		if err := unix.Fchownat(pfd, base, int(m.UID), int(m.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		for name, val := range m.Xattrs {
			if !oci.LayerXattr(name) {
				continue // host labels such as security.selinux stay on the host
			}
			if err := unix.Lsetxattr("/proc/self/fd/"+strconv.Itoa(pfd)+"/"+base, name, []byte(val), 0); err != nil {
				return fmt.Errorf("xattr %s: %w", name, err)
			}
		}
		if m.Type == overlay.TypeSymlink {
			return setTimes(pfd, base, &st)
		}
		// After chown, which clears setuid bits. The object was just made
		// here, by name in a directory opened through the root.
		if err := unix.Fchmodat(pfd, base, m.Mode, 0); err != nil {
			return err
		}
		if m.Type == overlay.TypeDir {
			c.dirs = append(c.dirs, madeDir{rel, st})
			return nil
		}
		return setTimes(pfd, base, &st)
	})
	if err != nil {
		return fmt.Errorf("copy %s to /%s: %w", src, rel, err)
	}
	return nil
}

func copyFileAt(src string, pfd int, base string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	out := os.NewFile(uintptr(fd), base)
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// setTimes gives the object base in pfd the modification time of a
// source object.
func setTimes(pfd int, base string, st *unix.Stat_t) error {
	ts := []unix.Timespec{st.Mtim, st.Mtim}
	return unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
}
