package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/durable"
)

// slot is a name under .tmp/ owned by a live process: <path>.lock exists
// and is flocked before anything appears at path, and stays so until path
// is gone. A sweeper that can lock it knows the owner died. The owner's
// pid is in the name for people; it does not decide anything, since pids
// of builds in other pid namespaces sharing the cache mean nothing here.
type slot struct {
	path string
	lock *os.File
}

func (c *Cache) newSlot(kind string) (*slot, error) {
	dir := filepath.Join(c.dir, tmpDir)
	for range 100 {
		var r [6]byte
		rand.Read(r[:])
		p := filepath.Join(dir, fmt.Sprintf("%d-%s-%s", os.Getpid(), kind, hex.EncodeToString(r[:])))
		f, err := createLocked(dir, p+lockSuffix)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if errors.Is(err, fs.ErrNotExist) {
			// Tidy removes .tmp/ when it is empty.
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		return &slot{path: p, lock: f}, nil
	}
	return nil, fmt.Errorf("%s: no free temp name", dir)
}

// createLocked creates the file p already flocked, so that no sweeper
// can see it unlocked: an O_TMPFILE is locked, then linked into place.
// Where O_TMPFILE is not supported, it is created and then locked.
func createLocked(dir, p string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err == nil {
		f := os.NewFile(uintptr(fd), p)
		if err := flock(f, unix.LOCK_EX); err != nil {
			f.Close()
			return nil, err
		}
		f.Chmod(0o644) // past the umask: other users' sweeps must open it to test it
		proc := "/proc/self/fd/" + strconv.Itoa(fd)
		if err := unix.Linkat(unix.AT_FDCWD, proc, unix.AT_FDCWD, p, unix.AT_SYMLINK_FOLLOW); err != nil {
			f.Close()
			if errors.Is(err, unix.EEXIST) {
				return nil, fs.ErrExist
			}
			if !errors.Is(err, unix.ENOENT) { // no /proc
				return nil, &os.LinkError{Op: "link", Old: proc, New: p, Err: err}
			}
		} else {
			return f, nil
		}
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	if err := flock(f, unix.LOCK_EX); err != nil {
		f.Close()
		os.Remove(p)
		return nil, err
	}
	return f, nil
}

// release gives up the slot once nothing is left at its path.
func (s *slot) release() {
	unlockFile(s.lock, s.path+lockSuffix)
}

// sweepTemps removes what dead owners left under .tmp/: temp entries of
// killed builds and half-removed entries of killed removers.
func (c *Cache) sweepTemps() {
	dir := filepath.Join(c.dir, tmpDir)
	des, _ := os.ReadDir(dir)
	for _, de := range des {
		name := de.Name()
		p := filepath.Join(dir, name)
		if base, ok := strings.CutSuffix(name, lockSuffix); ok {
			if f, ok, _ := tryLockFile(p, false); ok {
				removeAll(filepath.Join(dir, base))
				unlockFile(f, p)
			}
			continue
		}
		// Owners make the lock file before the dir and remove it after,
		// so a dir without one is stale (a removal that failed, or a
		// sweeper killed halfway). Look the lock up again: a listing
		// may miss a file made while it ran.
		if _, err := os.Lstat(p + lockSuffix); errors.Is(err, fs.ErrNotExist) {
			removeAll(p)
		}
	}
}

// Tidy leaves the cache dir holding entries only, as the Yocto class's
// cache does (its test suite takes every dir there for an entry): it
// sweeps what dead builds left, and removes .tmp/ and .locks/ when
// nothing is in them. Builds that start meanwhile make them again.
func (c *Cache) Tidy() {
	c.sweepTemps()
	c.sweepLocks()
	for _, d := range []string{tmpDir, locksDir} {
		os.Remove(filepath.Join(c.dir, d)) // fails while in use: fine
	}
}

// Temp is an entry under construction in .tmp/, on the cache's
// filesystem so that Insert can rename it into place and the union's work
// dir can stage copy-ups beside the upper.
type Temp struct {
	Dir  string
	name string
	c    *Cache
	slot *slot
}

// Rootfs is the empty layer dir (mode 0755) to build into: the upper.
func (t *Temp) Rootfs() string { return filepath.Join(t.Dir, rootfsDir) }

// Work is an empty dir for the union's copy-up staging (overlayfs's
// workdir), a sibling of Rootfs; Insert removes it.
func (t *Temp) Work() string { return filepath.Join(t.Dir, workDir) }

// BlobPath is where the caller writes the compressed layer blob.
func (t *Temp) BlobPath() string { return filepath.Join(t.Dir, blobFile) }

// NewTemp makes a temp entry for a build of the layer name. The caller
// must Insert or Abort it; a killed process's temp is swept later.
func (c *Cache) NewTemp(name string) (*Temp, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	s, err := c.newSlot(name)
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.dir, err)
	}
	t := &Temp{Dir: s.path, name: name, c: c, slot: s}
	for _, d := range []string{t.Dir, t.Rootfs(), t.Work()} {
		err = os.Mkdir(d, 0o755)
		if err == nil {
			err = os.Chmod(d, 0o755) // past the umask
		}
		if err != nil {
			t.Abort()
			return nil, fmt.Errorf("cache %s: %w", c.dir, err)
		}
	}
	return t, nil
}

// Abort removes the temp. It is a no-op after Insert or Abort.
func (t *Temp) Abort() error {
	if t.slot == nil {
		return nil
	}
	err := removeAll(t.Dir)
	t.slot.release()
	t.slot = nil
	if err != nil {
		return fmt.Errorf("cache temp %s: %w", t.Dir, err)
	}
	return nil
}

// Insert stores the temp as the entry of info.Key and info.Name (an empty
// Name is the temp's) and returns it. It checks the blob against
// info.Digest and info.Size (a zero Size is filled in), computes
// info.Tree, sets info.Created when zero, writes entry.json, the marker
// and .used, syncs the filesystem, and renames the temp into place: the
// entry appears complete or not at all.
//
// When an entry with the same key is already there (a builder that did
// not look up under the lock lost the race), the temp is discarded and
// that entry returned. One under the same name with another key (a key16
// collision) or a corrupt one is moved aside first, unless it is in use.
//
// Call it holding Lock(info.Key). On an error the temp is left for the
// caller to Abort.
func (c *Cache) Insert(ctx context.Context, t *Temp, info Info) (*Entry, error) {
	if t.slot == nil || t.c != c {
		return nil, fmt.Errorf("cache insert: temp %s was inserted, aborted, or made by another cache", t.Dir)
	}
	if info.Name == "" {
		info.Name = t.name
	}
	if err := checkKey(info.Key); err != nil {
		return nil, fmt.Errorf("cache insert: %w", err)
	}
	if err := checkName(info.Name); err != nil {
		return nil, fmt.Errorf("cache insert: %w", err)
	}
	final := c.entryDir(info.Key, info.Name)
	fail := func(err error) (*Entry, error) {
		return nil, fmt.Errorf("cache insert %s: %w", filepath.Base(final), err)
	}
	if err := info.DiffID.Validate(); err != nil {
		return fail(fmt.Errorf("diff_id: %w", err))
	}
	if len(info.KeyInputs) > 0 && KeyOf(info.KeyInputs) != info.Key {
		return fail(fmt.Errorf("key %s is not the sha256 of its key inputs", info.Key))
	}
	if err := removeAll(t.Work()); err != nil {
		return fail(err)
	}
	size, err := checkBlob(ctx, t.BlobPath(), info.Digest, info.Size)
	if err != nil {
		return fail(err)
	}
	info.Size = size
	if info.Tree, info.TreeTrusted, err = treeDigest(ctx, t.Rootfs()); err != nil {
		return fail(err)
	}
	info.Packages = slices.Clone(info.Packages)
	slices.Sort(info.Packages)
	if info.Created.IsZero() {
		info.Created = time.Now()
	}
	info.Created = info.Created.UTC()
	data, err := json.MarshalIndent(entryJSON{Schema: entrySchema, Info: info}, "", "  ")
	if err != nil {
		return fail(err)
	}
	for name, content := range map[string][]byte{entryFile: append(data, '\n'), markerFile: marker(info), usedFile: nil} {
		if err := os.WriteFile(filepath.Join(t.Dir, name), content, 0o644); err != nil {
			return fail(err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	// One syncfs covers the build's whole rootfs, the blob and the files
	// above; fsyncing each file of a rootfs would cost far more.
	if err := syncfs(t.Dir); err != nil {
		return fail(err)
	}
	c.at("insert:synced")
	for attempt := 0; ; attempt++ {
		err := renameNoReplace(t.Dir, final)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || attempt > 0 {
			return fail(err)
		}
		old, rerr := readEntry(final)
		if rerr == nil && old.Info.Key == info.Key {
			t.Abort()
			old.LastUsed = touchUsed(old.Dir)
			return old, nil
		}
		if err := c.displace(old, rerr); err != nil {
			return fail(err)
		}
	}
	c.at("insert:renamed")
	t.slot.release()
	t.slot = nil
	if err := durable.SyncDir(c.dir); err != nil {
		return fail(err)
	}
	e := &Entry{Dir: final, Info: info, LastUsed: time.Now()}
	c.sweepTemps()
	return e, nil
}

// displace clears an entry's name for a new entry: a corrupt entry goes
// to quarantine, one of another key is removed.
func (c *Cache) displace(old *Entry, readErr error) (err error) {
	switch {
	case errors.Is(readErr, errGone):
		return nil // removed meanwhile: the rename can be retried
	case errors.Is(readErr, ErrCorrupt):
		_, err = c.quarantine(old)
	case readErr != nil:
		return readErr
	default:
		err = c.removeEntry(old)
	}
	if errors.Is(err, errGone) {
		return nil
	}
	return err
}

func syncfs(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return &os.PathError{Op: "syncfs", Path: p, Err: err}
	}
	return nil
}
