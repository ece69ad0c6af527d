package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// lockPoll is how often a waiting Lock retries. flock has no timed or
// cancellable wait, and a blocked flock call would pin its thread.
const lockPoll = 50 * time.Millisecond

// Lock takes the exclusive lock of key, waiting until it is free or ctx
// ends. It serializes the builds of one key across goroutines and
// processes (the lock is an flock on .locks/<key>.lock); different keys
// never wait for each other. unlock removes the lock file, so none is
// left after a build.
func (c *Cache) Lock(ctx context.Context, key string) (unlock func(), err error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	p := c.keyLockPath(key)
	var tick *time.Ticker
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("cache lock %s: %w", ShortKey(key), err)
		}
		f, ok, err := tryLockFile(p, true)
		if err != nil {
			return nil, fmt.Errorf("cache lock %s: %w", ShortKey(key), err)
		}
		if ok {
			return sync.OnceFunc(func() { unlockFile(f, p) }), nil
		}
		if tick == nil {
			tick = time.NewTicker(lockPoll)
			defer tick.Stop()
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

func (c *Cache) keyLockPath(key string) string {
	return filepath.Join(c.dir, locksDir, key+lockSuffix)
}

// tryLockFile takes the exclusive lock on the file p without waiting,
// creating p when create is set; ok is false when another holder has it.
//
// Lock files are removed by their holder on unlock, so a waiter may end
// up holding the lock on a file that is no longer at p while a newcomer
// locks a new one there: a lock counts only when p still names the
// locked file, else it is retried.
func tryLockFile(p string, create bool) (f *os.File, ok bool, err error) {
	flags := os.O_RDONLY
	if create {
		flags |= os.O_CREATE
	}
	for {
		f, err := os.OpenFile(p, flags, 0o644)
		// Tidy (of another process) removes .locks/ when no lock is left
		// in it, and may do so again between a MkdirAll and the open.
		for try := 0; create && errors.Is(err, fs.ErrNotExist) && try < 100; try++ {
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				return nil, false, err
			}
			f, err = os.OpenFile(p, flags, 0o644)
		}
		if err != nil {
			return nil, false, err
		}
		if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, false, nil
			}
			return nil, false, err
		}
		if sameFile(f, p) {
			return f, true, nil
		}
		f.Close()
		if !create {
			return nil, false, os.ErrNotExist
		}
	}
}

// unlockFile removes a lock file while still holding its lock (see
// tryLockFile), then releases it.
func unlockFile(f *os.File, p string) {
	os.Remove(p)
	f.Close()
}

// flock is unix.Flock on f, retried when a signal interrupts it (the Go
// runtime sends them for preemption).
func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

// sameFile reports whether the open file f is what p names now.
func sameFile(f *os.File, p string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Lstat(p, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// sweepLocks removes key lock files that nobody holds: those of killed
// builds (a process's flocks die with it, its files do not).
func (c *Cache) sweepLocks() {
	dir := filepath.Join(c.dir, locksDir)
	des, _ := os.ReadDir(dir)
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), lockSuffix) {
			continue
		}
		p := filepath.Join(dir, de.Name())
		if f, ok, _ := tryLockFile(p, false); ok {
			unlockFile(f, p)
		}
	}
}

// tryTakeKey takes key's build lock without waiting; an entry whose key
// is locked may be about to be used (Lookup → Use) and must stay.
func (c *Cache) tryTakeKey(key string) (unlock func(), err error) {
	if checkKey(key) != nil {
		return func() {}, nil // an unreadable entry: nobody can look it up
	}
	p := c.keyLockPath(key)
	f, ok, err := tryLockFile(p, true)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: a build holds its key", ErrInUse)
	}
	return func() { unlockFile(f, p) }, nil
}
