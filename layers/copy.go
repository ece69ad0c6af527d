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

	"github.com/layerfs/layerfs/oci/layer"
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
//
// Owners are copied as the sources have them (see copyItems); a device
// or fifo cannot be copied through a rootless mount.
func copyInto(ctx context.Context, mnt string, items []copyItem) error {
	specials, err := copyItems(ctx, mnt, items, nil)
	if err == nil && len(specials) > 0 {
		err = fmt.Errorf("/%s: a %s cannot be made through a rootless mount", specials[0].path, specials[0].override.Type)
	}
	return err
}

// copyItems is copyInto for the sources of a build's copying layers.
// Each object gets its effective owner, mode and type: those an
// override_stat records where the source has one (a tree a rootless
// process applied from a tar), with the on-disk owner squashed as the
// layer will be (squash, see overlay.Meta.Squash). Through a rootless
// mount, chown and chmod are recorded by the mount's daemon; devices and
// fifos, which an unprivileged process cannot make there, are made as
// empty files and returned as specials, whose override records the caller
// writes into the upper once the mount is gone (applySpecials).
func copyItems(ctx context.Context, mnt string, items []copyItem, squash *overlay.Owner) ([]special, error) {
	root, err := os.OpenRoot(mnt)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	c := &copier{ctx: ctx, root: root, links: map[[2]uint64]string{}, squash: squash, rootless: os.Geteuid() != 0}
	if c.rootless {
		if c.mnt, err = filepath.EvalSymlinks(mnt); err != nil {
			return nil, err
		}
	}
	if err := c.items(items); err != nil {
		return nil, err
	}
	return c.specials, nil
}

func (c *copier) items(items []copyItem) error {
	for _, it := range items {
		rel := strings.Trim(it.dst, "/")
		if it.into {
			// cp -a SRC DST: into DST when it is a directory (Stat
			// follows links within the image only).
			if st, err := c.root.Stat(rel); strings.HasSuffix(it.dst, "/") || err == nil && st.IsDir() {
				rel = path.Join(rel, filepath.Base(it.src))
			}
		}
		if err := c.parents(it, rel); err != nil {
			return err
		}
		if err := c.tree(it.src, rel, it.replace); err != nil {
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
	// squash maps the sources' on-disk owner as the layer will.
	squash *overlay.Owner
	// rootless: the mount's daemon is unprivileged; mnt is the mountpoint
	// without symlinks, which specials' paths are relative to.
	rootless bool
	mnt      string
	specials []special
}

// special is a device or fifo that a rootless copy made as an empty file
// at path (in the union, without symlinks), to be given its type and
// owner by an override record in the upper.
type special struct {
	path     string
	override overlay.Override
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
// kept, or with replace replaced where they differ.
func (c *copier) tree(src, rel string, replace bool) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	st, err := os.Lstat(src)
	if err != nil {
		return err
	}
	dt, err := c.root.Lstat(rel)
	if err == nil && replace && st.IsDir() && dt.IsDir() {
		if err := c.syncDir(src, rel); err != nil {
			return err
		}
	}
	if err == nil && replace && !(st.IsDir() && dt.IsDir()) {
		same, serr := c.same(src, rel)
		if serr != nil {
			return serr
		}
		if same {
			return nil
		}
		// A directory gives way to a symlink (merged-usr's /bin ->
		// usr/bin, as the class's rsync path does), not to a file: that
		// would throw away all beneath it.
		if dt.IsDir() && st.Mode()&fs.ModeSymlink == 0 {
			return fmt.Errorf("/%s: a directory in the layers below, and not one in %s", rel, src)
		}
		// Through the union: what a lower holds is whited out.
		if err := c.root.RemoveAll(rel); err != nil {
			return fmt.Errorf("/%s: %w", rel, err)
		}
		dt, err = nil, fs.ErrNotExist
	}
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
		if err := c.tree(filepath.Join(src, e.Name()), rel+"/"+e.Name(), replace); err != nil {
			return err
		}
	}
	return nil
}

// syncDir gives the image's directory rel the source directory's owner
// and mode where they differ, and its times once the copy is done, as
// rsync -a does for a directory both have.
func (c *copier) syncDir(src, rel string) error {
	e, err := overlay.Stat(src)
	if err != nil {
		return err
	}
	m := e.Meta
	m.Squash(c.squash)
	var st, dst unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return err
	}
	err = c.at(rel, func(pfd int, base string) error {
		if err := unix.Fstatat(pfd, base, &dst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if dst.Uid != m.UID || dst.Gid != m.GID {
			if err := unix.Fchownat(pfd, base, int(m.UID), int(m.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
		}
		if dst.Mode&07777 != m.Mode&07777 || dst.Uid != m.UID || dst.Gid != m.GID {
			return unix.Fchmodat(pfd, base, m.Mode&07777, 0)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("/%s: %w", rel, err)
	}
	c.dirs = append(c.dirs, madeDir{rel: rel, st: st})
	return nil
}

// same reports whether the image's object at rel is the source's as
// rsync's quick check sees it: type, effective owner and mode, size and
// mtime, and a symlink's target.
func (c *copier) same(src, rel string) (bool, error) {
	e, err := overlay.Stat(src)
	if err != nil {
		return false, err
	}
	m := e.Meta
	m.Squash(c.squash)
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return false, err
	}
	var dst unix.Stat_t
	err = c.at(rel, func(pfd int, base string) error {
		return unix.Fstatat(pfd, base, &dst, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		return false, fmt.Errorf("/%s: %w", rel, err)
	}
	if dst.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT || dst.Mode&07777 != m.Mode&07777 ||
		dst.Uid != m.UID || dst.Gid != m.GID || dst.Size != st.Size || dst.Mtim != st.Mtim {
		return false, nil
	}
	if m.Type == overlay.TypeSymlink {
		target, err := c.root.Readlink(rel)
		return err == nil && target == m.Link, nil
	}
	return true, nil
}

// one copies a single object with its metadata and the xattrs a layer
// carries.
func (c *copier) one(src, rel string) error {
	e, err := overlay.Stat(src)
	if err != nil {
		return err
	}
	m := e.Meta
	m.Squash(c.squash)
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
			if c.rootless {
				if err := c.placeholder(pfd, base, &m); err != nil {
					return err
				}
				break
			}
			mode := uint32(unix.S_IFIFO)
			switch m.Type {
			case overlay.TypeChar:
				mode = unix.S_IFCHR
			case overlay.TypeBlock:
				mode = unix.S_IFBLK
			}
			if err := unix.Mknodat(pfd, base, mode|0o600, int(unix.Mkdev(m.Major, m.Minor))); err != nil {
				return err
			}
		default:
			return fmt.Errorf("cannot copy a %s", m.Type)
		}
		if err := unix.Fchownat(pfd, base, int(m.UID), int(m.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		for name, val := range m.Xattrs {
			if !layer.KeepsXattr(name) {
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

// placeholder makes the device or fifo m as an empty regular file (which
// then gets m's owner, mode, xattrs and mtime like any copy) and keeps it
// as a special. Its path in the union comes from the parent's descriptor,
// so that symlinks the copy followed inside the image are resolved.
func (c *copier) placeholder(pfd int, base string, m *overlay.Meta) error {
	dir, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(pfd))
	if err != nil {
		return err
	}
	rel, ok := strings.CutPrefix(dir, c.mnt)
	if !ok || (rel != "" && rel[0] != '/') {
		return fmt.Errorf("%s is not beneath the mount %s", dir, c.mnt)
	}
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	unix.Close(fd)
	c.specials = append(c.specials, special{
		path:     strings.TrimPrefix(rel+"/"+base, "/"),
		override: overlay.Override{UID: m.UID, GID: m.GID, Mode: m.Mode, Type: m.Type, Major: m.Major, Minor: m.Minor},
	})
	return nil
}

// applySpecials gives the specials a rootless copy made their type and
// owner, by override records in upper, the layer dir of the union they
// were made in, which must no longer be mounted: the mount's kernel side
// would otherwise see the type of a known inode change. Each is an empty
// regular file that the copy made in this layer, so it is in the upper
// at its path, and no symlink is followed on the way.
func applySpecials(upper string, specials []special) error {
	if len(specials) == 0 {
		return nil
	}
	root, err := os.OpenRoot(upper)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, sp := range specials {
		dir, base := path.Split(sp.path)
		dir = strings.TrimSuffix(dir, "/")
		if dir == "" {
			dir = "."
		}
		err := func() error {
			pf, err := root.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
			if err != nil {
				return err
			}
			defer pf.Close()
			var st unix.Stat_t
			if err := unix.Fstatat(int(pf.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
			if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 {
				return fmt.Errorf("not the empty file the copy made")
			}
			p := "/proc/self/fd/" + strconv.Itoa(int(pf.Fd())) + "/" + base
			return unix.Lsetxattr(p, overlay.XattrOverrideStat, []byte(sp.override.Format()), 0)
		}()
		if err != nil {
			return fmt.Errorf("/%s: %s: %w", sp.path, sp.override.Type, err)
		}
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
