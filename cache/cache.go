package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// Names inside the cache dir. Everything that is not an entry starts with
// a dot, so an entry name (which starts with hex) never collides with it.
const (
	tmpDir        = ".tmp"
	locksDir      = ".locks"
	quarantineDir = ".quarantine"

	entryFile  = "entry.json"
	markerFile = ".oci-layer-cache"
	usedFile   = ".used"
	rootfsDir  = "rootfs"
	blobFile   = "blob"
	workDir    = "work"

	lockSuffix = ".lock"

	// maxNameLen keeps <pid>-<name>-<random>.lock within NAME_MAX.
	maxNameLen = 200
)

var (
	// ErrInUse is wrapped by errors about entries that a live build or
	// mount uses (a held Use or key lock, or the caller's InUse check).
	ErrInUse = errors.New("in use")
	// ErrCorrupt is wrapped by errors about entries whose files do not
	// match their entry.json, or whose entry.json is unreadable.
	ErrCorrupt = errors.New("corrupt")
)

// Cache is a cache dir opened for use. Several Caches, in one process or
// many, may share a dir: everything they coordinate on is in the dir.
type Cache struct {
	dir string
	// trusted: this process can see trusted.* xattrs, so the tree
	// digests it takes cover them (see Info.TreeTrusted).
	trusted bool
	// hook, when set (by tests), is called at named points of Insert and
	// removal, so a test can kill the process exactly there.
	hook func(point string)
}

// DefaultDir is $XDG_CACHE_HOME/layerfs, else ~/.cache/layerfs; "" when
// neither is known, which Open rejects.
func DefaultDir() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "layerfs")
}

// Open opens the cache at dir, creating it, and removes what killed
// builds left in it: temp dirs and lock files whose owners are gone.
func Open(dir string) (*Cache, error) {
	if dir == "" {
		return nil, inputerr.New("cache: no cache dir: neither $XDG_CACHE_HOME nor $HOME is set; name one")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", dir, err)
	}
	for _, d := range []string{abs, filepath.Join(abs, tmpDir), filepath.Join(abs, locksDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("cache %s: %w", abs, err)
		}
	}
	// Entries hold what base images and installs put there, setuid-root
	// files and device nodes included, and builds serve their mounts from
	// inside: nobody else may reach into the cache (as containers/storage
	// and docker keep their roots).
	if st, err := os.Stat(abs); err == nil && st.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(abs, st.Mode().Perm()&0o700); err != nil {
			return nil, fmt.Errorf("cache %s: %w", abs, err)
		}
	}
	// The probe is on the cache dir itself: .tmp/ may be gone already
	// (another process's Tidy), and it is on the same filesystem.
	c := &Cache{dir: abs, trusted: canWriteTrusted(abs)}
	c.sweepTemps()
	c.sweepLocks()
	return c, nil
}

// Dir is the cache's directory, absolute.
func (c *Cache) Dir() string { return c.dir }

func (c *Cache) at(point string) {
	if c.hook != nil {
		c.hook(point)
	}
}

// ShortKey is the first 16 hex digits of a key, which name its entry and
// appear in the build's log lines.
func ShortKey(key string) string {
	if len(key) < 16 {
		return key
	}
	return key[:16]
}

// checkKey accepts a key as the layers package makes them: the 64 lower
// hex digits of a sha256 (for base layers, their diff_id's).
// KeyOf is the key of canonical key inputs: their sha256, in hex.
func KeyOf(inputs []byte) string {
	sum := sha256.Sum256(inputs)
	return hex.EncodeToString(sum[:])
}

func checkKey(key string) error {
	if len(key) != 64 || !isHex(key) {
		return fmt.Errorf("cache key %q: want 64 lowercase hex digits", key)
	}
	return nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// checkName accepts a layer name that can be part of a file name and of
// a marker line as it is: no separators, no control characters, no
// leading dot or dash.
func checkName(name string) error {
	ok := name != "" && len(name) <= maxNameLen && name[0] != '.' && name[0] != '-'
	for i := 0; ok && i < len(name); i++ {
		b := name[i]
		ok = b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' ||
			b == '.' || b == '_' || b == '-' || b == '+'
	}
	if !ok {
		return inputerr.New("layer name %q: want letters, digits and . _ - + (not first: . -), at most %d bytes", name, maxNameLen)
	}
	return nil
}

func entryName(key, name string) string { return key[:16] + "-" + name }

func (c *Cache) entryDir(key, name string) string {
	return filepath.Join(c.dir, entryName(key, name))
}

// splitEntryName splits an entry dir's name into key16 and layer name.
func splitEntryName(s string) (key16, name string, ok bool) {
	if len(s) < 18 || s[16] != '-' || !isHex(s[:16]) || checkName(s[17:]) != nil {
		return "", "", false
	}
	return s[:16], s[17:], true
}

// list reads every entry, sorted by name. Entries that cannot be read are
// listed with Err set; those removed while listing are left out. With
// usage, DiskSize is filled in (a walk of each entry).
func (c *Cache) list(ctx context.Context, usage bool) ([]*Entry, error) {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.dir, err)
	}
	var out []*Entry
	for _, de := range des {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if _, _, ok := splitEntryName(de.Name()); !ok || !de.IsDir() {
			continue
		}
		dir := filepath.Join(c.dir, de.Name())
		e, err := readEntry(dir)
		if errors.Is(err, errGone) {
			continue
		}
		if usage {
			n, uerr := diskUsage(ctx, dir)
			if errors.Is(uerr, fs.ErrNotExist) {
				continue
			}
			if uerr != nil && ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if uerr != nil && err == nil {
				err = uerr
			}
			e.DiskSize = n
		}
		e.Err = err
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *Entry) int { return strings.Compare(a.Name(), b.Name()) })
	return out, nil
}

// List returns every entry, sorted by dir name, with its last-used time
// and disk size, which takes a walk of each entry's files. Entries whose
// entry.json cannot be read are included with Err set (Verify
// quarantines them; Prune and Remove can remove them).
func (c *Cache) List(ctx context.Context) ([]*Entry, error) {
	return c.list(ctx, true)
}

// Entries is List without the disk sizes: it reads only entry.json and
// the last-used time of each entry.
func (c *Cache) Entries() ([]*Entry, error) {
	return c.list(context.Background(), false)
}

// diskUsage sums the blocks that the files under dir occupy, counting a
// hardlinked inode once (within dir: a blob also linked into an image
// layout still counts here, as removing the entry alone does not free it).
func diskUsage(ctx context.Context, dir string) (int64, error) {
	type ino struct{ dev, ino uint64 }
	seen := map[ino]bool{}
	var total int64
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n++; n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			k := ino{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		total += st.Blocks * 512
		return nil
	})
	return total, err
}

// canWriteTrusted reports whether this process may set trusted.* xattrs
// in dir (CAP_SYS_ADMIN in the initial namespace). Without it they are
// invisible to listxattr, so a tree digest silently leaves them out. The
// probe replaces an attribute that does not exist: a privileged caller
// gets ENODATA and nothing is written.
func canWriteTrusted(dir string) bool {
	err := unix.Lsetxattr(dir, "trusted.layerfs.probe", nil, unix.XATTR_REPLACE)
	return err == nil || errors.Is(err, unix.ENODATA)
}

// renameNoReplace renames a dir into place, failing with EEXIST when the
// target exists, even as an empty dir (which a plain rename would
// replace).
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A filesystem without RENAME_NOREPLACE: rename fails on a
		// non-empty target, which every entry is.
		err = unix.Rename(from, to)
	}
	if errors.Is(err, unix.ENOTEMPTY) {
		err = unix.EEXIST
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// removeAll removes p and everything under it, like os.RemoveAll, but as
// a layer dir needs. Directories without write or search permission (a
// package's 0555 dirs, an overlay work dir's 0000 work/) are first made
// u+rwx, which an unprivileged remover needs. And it never descends into
// another mount (a killed build's mount point, a bind mount): deleting
// what a live mount shows could delete files outside the cache. It fails
// there instead, after removing what it can; the dir is swept again
// later, when fs has cleared the mount.
func removeAll(p string) error {
	st, err := lstatx(p)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return &fs.PathError{Op: "statx", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlink(p); err != nil && !errors.Is(err, unix.ENOENT) {
			return &fs.PathError{Op: "unlink", Path: p, Err: err}
		}
		return nil
	}
	return removeDir(p, &st, &st)
}

func removeDir(dir string, st, root *unix.Statx_t) error {
	if st.Mode&0o700 != 0o700 {
		unix.Chmod(dir, uint32(st.Mode&0o7777|0o700))
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		p := filepath.Join(dir, name)
		cst, err := lstatx(p)
		switch {
		case errors.Is(err, unix.ENOENT):
		case err != nil:
			errs = append(errs, &fs.PathError{Op: "statx", Path: p, Err: err})
		case cst.Mode&unix.S_IFMT != unix.S_IFDIR:
			if err := unix.Unlink(p); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, &fs.PathError{Op: "unlink", Path: p, Err: err})
			}
		case otherMount(&cst, root):
			errs = append(errs, fmt.Errorf("%s: a mount point; not removing what it shows", p))
		default:
			if err := removeDir(p, &cst, root); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return &fs.PathError{Op: "rmdir", Path: dir, Err: err}
	}
	return nil
}

func lstatx(p string) (unix.Statx_t, error) {
	var st unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW,
		unix.STATX_TYPE|unix.STATX_MODE|unix.STATX_MNT_ID, &st)
	return st, err
}

// otherMount reports whether the dir st is on another mount than root:
// by mount id, or (before Linux 5.8) by device, which misses bind mounts
// of the same filesystem.
func otherMount(st, root *unix.Statx_t) bool {
	if st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return true
	}
	if st.Mask&root.Mask&unix.STATX_MNT_ID != 0 {
		return st.Mnt_id != root.Mnt_id
	}
	return st.Dev_major != root.Dev_major || st.Dev_minor != root.Dev_minor
}
