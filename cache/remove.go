package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/durable"
	"github.com/layerfs/layerfs/internal/inputerr"
)

// takeOut renames the entry to dest, outside every entry name, unless it
// is in use: its key's build lock or its Use lock is held. Both are only
// tried, never waited for; the exclusive lock on the entry is held just
// for the rename, which a Use then waits for and detects.
func (c *Cache) takeOut(e *Entry, dest string) error {
	unlockKey, err := c.tryTakeKey(e.Info.Key)
	if err != nil {
		return err
	}
	defer unlockKey()
	f, err := os.Open(e.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return errGone
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w: a build or mount holds it", ErrInUse)
		}
		return err
	}
	if !sameFile(f, e.Dir) {
		return errGone
	}
	if err := renameNoReplace(e.Dir, dest); err != nil {
		return err
	}
	if err := durable.SyncDir(c.dir); err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(dest))
}

// inUseNow reports whether takeOut would refuse the entry, without
// taking it out.
func (c *Cache) inUseNow(e *Entry) bool {
	unlockKey, err := c.tryTakeKey(e.Info.Key)
	if err != nil {
		return errors.Is(err, ErrInUse)
	}
	defer unlockKey()
	f, err := os.Open(e.Dir)
	if err != nil {
		return false
	}
	defer f.Close()
	return errors.Is(flock(f, unix.LOCK_EX|unix.LOCK_NB), unix.EWOULDBLOCK)
}

// removeEntry takes the entry out to a temp slot, so that a crash while
// deleting its files leaves nothing under its name, and deletes it.
func (c *Cache) removeEntry(e *Entry) error {
	s, err := c.newSlot("trash")
	if err != nil {
		return err
	}
	if err := c.takeOut(e, s.path); err != nil {
		s.release()
		return err
	}
	c.at("remove:renamed")
	err = removeAll(s.path)
	s.release() // a failed removal is retried by the next sweep
	return err
}

// quarantine moves a corrupt entry into .quarantine/ and returns where.
func (c *Cache) quarantine(e *Entry) (string, error) {
	qdir := filepath.Join(c.dir, quarantineDir)
	if err := os.MkdirAll(qdir, 0o755); err != nil {
		return "", err
	}
	dest := filepath.Join(qdir, e.Name()+"."+time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := c.takeOut(e, dest); err != nil {
		return "", err
	}
	return dest, nil
}

// Remove removes one entry, named by its dir name, its full key, or a
// prefix of its key of at least 4 hex digits (a "sha256:" in front is
// ignored), and returns it (a slice of one, or nil on an error). A prefix
// that matches several entries is an error naming them. It refuses an
// entry in use: a held Use or key lock, or inUse (may be nil) reporting
// its dir as mounted.
func (c *Cache) Remove(keyOrPrefix string, inUse func(entryDir string) bool) ([]*Entry, error) {
	ents, err := c.list(context.Background(), false)
	if err != nil {
		return nil, err
	}
	m, err := match(ents, keyOrPrefix)
	if err != nil {
		return nil, err
	}
	fail := func(err error) ([]*Entry, error) {
		return nil, fmt.Errorf("cache remove %s: %w", m.Name(), err)
	}
	if inUse != nil && inUse(m.Dir) {
		return fail(fmt.Errorf("%w: it is mounted", ErrInUse))
	}
	if err := c.removeEntry(m); err != nil {
		return fail(err)
	}
	return []*Entry{m}, nil
}

// Find returns the entry named by its dir name, its full key, or a key
// prefix of at least 4 hex digits, as Remove takes them.
func (c *Cache) Find(keyOrPrefix string) (*Entry, error) {
	ents, err := c.list(context.Background(), false)
	if err != nil {
		return nil, err
	}
	return match(ents, keyOrPrefix)
}

func match(ents []*Entry, arg string) (*Entry, error) {
	var found []*Entry
	if _, _, ok := splitEntryName(arg); ok {
		for _, e := range ents {
			if e.Name() == arg {
				found = append(found, e)
			}
		}
	} else {
		k := strings.TrimPrefix(arg, "sha256:")
		if len(k) < 4 || len(k) > 64 || !isHex(k) {
			return nil, inputerr.New("cache entry %q: want an entry name, or a key or key prefix of 4 to 64 lowercase hex digits", arg)
		}
		for _, e := range ents {
			if len(k) <= 16 && strings.HasPrefix(e.Name(), k) || strings.HasPrefix(e.Info.Key, k) {
				found = append(found, e)
			}
		}
	}
	switch len(found) {
	case 0:
		return nil, inputerr.New("cache entry %q: no entry matches (see layerfs cache list)", arg)
	case 1:
		return found[0], nil
	}
	names := make([]string, len(found))
	for i, e := range found {
		names[i] = e.Name()
	}
	return nil, inputerr.New("cache entry %q is ambiguous: it matches %s; give more digits", arg, strings.Join(names, ", "))
}

// PruneOptions choose what Prune removes: an entry that any set
// criterion picks. At least one of OlderThan, MaxSize and All must be set.
type PruneOptions struct {
	// OlderThan removes entries last used before now-OlderThan.
	OlderThan time.Duration
	// MaxSize removes least recently used entries until the entries' total
	// disk usage is at most MaxSize (entries in use still count).
	MaxSize int64
	// All removes every entry not in use.
	All bool
	// InUse reports an entry dir that a live mount uses although no Use
	// lock is held on it (the CLI checks the mount table); may be nil.
	InUse func(entryDir string) bool
	// DryRun reports what would be removed and removes nothing.
	DryRun bool
}

// Prune removes entries by age, by total size (least recently used
// first) or all, and returns them in the order removed, oldest first. It
// never removes an entry in use (a held Use or key lock, or o.InUse);
// those are skipped, not errors. Errors removing one entry do not stop
// the others; they are returned joined.
func (c *Cache) Prune(ctx context.Context, o PruneOptions) ([]*Entry, error) {
	if o.OlderThan <= 0 && o.MaxSize <= 0 && !o.All {
		return nil, inputerr.New("cache prune: nothing to prune by: give a maximum age, a maximum size, or all")
	}
	if o.OlderThan < 0 || o.MaxSize < 0 {
		return nil, inputerr.New("cache prune: a negative age or size")
	}
	ents, err := c.list(ctx, o.MaxSize > 0)
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(ents, func(a, b *Entry) int { return cmp.Compare(a.LastUsed.UnixNano(), b.LastUsed.UnixNano()) })
	var total int64
	for _, e := range ents {
		total += e.DiskSize
	}
	cutoff := time.Now().Add(-o.OlderThan)
	var removed []*Entry
	var errs []error
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return removed, errors.Join(append(errs, err)...)
		}
		want := o.All || o.OlderThan > 0 && e.LastUsed.Before(cutoff) || o.MaxSize > 0 && total > o.MaxSize
		if !want || o.InUse != nil && o.InUse(e.Dir) {
			continue
		}
		if o.DryRun {
			if c.inUseNow(e) {
				continue
			}
		} else if err := c.removeEntry(e); err != nil {
			if !errors.Is(err, ErrInUse) && !errors.Is(err, errGone) {
				errs = append(errs, fmt.Errorf("cache prune %s: %w", e.Name(), err))
			}
			continue
		}
		total -= e.DiskSize
		removed = append(removed, e)
	}
	return removed, errors.Join(errs...)
}
