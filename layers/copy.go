package layers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/overlay"
)

// copyInto copies the items into root, a mounted union, skipping every
// path the union already holds, as the Yocto class does: a directories or
// files layer adds only what the layers below lack. Writing through the
// union, rather than into the upper, lets the union copy up the parents
// it must change with their metadata.
func copyInto(ctx context.Context, root string, items []copyItem) error {
	c := &copier{ctx: ctx, root: root, links: map[[2]uint64]string{}}
	for _, it := range items {
		if err := c.parents(it); err != nil {
			return err
		}
		if err := c.tree(it.src, filepath.Join(root, it.dst)); err != nil {
			return err
		}
	}
	// Directories get their times once nothing more is made in them;
	// children were made after their parents, so they go first here.
	for i := len(c.dirs) - 1; i >= 0; i-- {
		if err := setTimes(c.dirs[i].dst, &c.dirs[i].st); err != nil {
			return err
		}
	}
	return nil
}

type copier struct {
	ctx   context.Context
	root  string
	links map[[2]uint64]string // source (dev, ino) → first copy, for hardlinks
	dirs  []madeDir
}

type madeDir struct {
	dst string
	st  unix.Stat_t
}

// parents creates the missing parents of it.dst: with the source
// rootfs's metadata where the item comes from one, else root-owned 0755.
func (c *copier) parents(it copyItem) error {
	rel := strings.Trim(it.dst, "/")
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		p := strings.Join(parts[:i], "/")
		dst := filepath.Join(c.root, p)
		if _, err := os.Lstat(dst); err == nil {
			continue
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if it.fromRootfs != "" {
			if err := c.one(filepath.Join(it.fromRootfs, p), dst); err != nil {
				return err
			}
			continue
		}
		if err := os.Mkdir(dst, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// tree copies src to dst, recursively; names dst already holds are kept.
func (c *copier) tree(src, dst string) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	st, err := os.Lstat(src)
	if err != nil {
		return err
	}
	dt, err := os.Lstat(dst)
	switch {
	case err == nil && !(st.IsDir() && dt.IsDir()):
		return nil // the layers below hold it
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	case err != nil:
		if err := c.one(src, dst); err != nil {
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
		if err := c.tree(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// one copies a single object with its metadata.
func (c *copier) one(src, dst string) error {
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
			return os.Link(first, dst)
		}
		c.links[id] = dst
	}
	switch m.Type {
	case overlay.TypeDir:
		err = os.Mkdir(dst, 0o700)
	case overlay.TypeReg:
		err = copyFile(src, dst)
	case overlay.TypeSymlink:
		err = os.Symlink(m.Link, dst)
	case overlay.TypeChar, overlay.TypeBlock, overlay.TypeFifo:
		err = unix.Mknod(dst, st.Mode, int(st.Rdev))
	default:
		return fmt.Errorf("%s: cannot copy a %s", src, m.Type)
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := os.Lchown(dst, int(m.UID), int(m.GID)); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	for name, val := range m.Xattrs {
		if err := unix.Lsetxattr(dst, name, []byte(val), 0); err != nil {
			return fmt.Errorf("copy %s: xattr %s: %w", src, name, err)
		}
	}
	if m.Type != overlay.TypeSymlink {
		// After chown, which clears setuid bits.
		if err := unix.Chmod(dst, m.Mode); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
	}
	if m.Type == overlay.TypeDir {
		c.dirs = append(c.dirs, madeDir{dst, st})
		return nil
	}
	return setTimes(dst, &st)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// setTimes gives dst the modification time of a source object.
func setTimes(dst string, st *unix.Stat_t) error {
	ts := []unix.Timespec{st.Mtim, st.Mtim}
	return unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW)
}
