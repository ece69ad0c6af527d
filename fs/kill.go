package fs

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/overlay"
)

// Setuid and setgid bits are cleared when someone without CAP_FSETID
// modifies a file: a setuid binary that anyone may write and that stays
// setuid is a way to root. The daemon cannot see the caller's
// capabilities; the kernel, which can, says so with the request: a flag on
// WRITE (FUSE_WRITE_KILL_SUIDGID) and on SETATTR (FATTR_KILL_SUIDGID, for
// truncate) once the daemon handles privileges itself
// (CAP_HANDLE_KILLPRIV_V2). fallocate carries no flag (the kernel expects
// the daemon to decide): there a caller other than root counts as
// unprivileged. Writes must reach the daemon for the flag to: a writable
// open of a setuid or setgid file by a caller other than root gets no
// passthrough I/O (file.go).
//
// Rootless, nothing is cleared: the mounting user stands for every owner,
// root too, as a fake root (pseudo, fakeroot) would have it.
//
// go-fuse's node API does not pass the WRITE flags on; killFS, wrapped
// around the raw filesystem, keeps them by the request's cancel channel,
// which the node API's context carries, for the request's life.
type killFS struct {
	fuse.RawFileSystem
	asked *sync.Map // cancel channel → struct{}
}

func (k *killFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID != 0 {
		k.asked.Store(cancel, struct{}{})
		defer k.asked.Delete(cancel)
	}
	return k.RawFileSystem.Write(cancel, in, data)
}

func (k *killFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	if in.WriteFlags&fuse.WRITE_KILL_SUIDGID != 0 {
		k.asked.Store(cancel, struct{}{})
		defer k.asked.Delete(cancel)
	}
	return k.RawFileSystem.Writev(cancel, in, data)
}

// killAsked reports whether the kernel asked, with the request of ctx, to
// clear setuid and setgid bits.
func (fs *filesystem) killAsked(ctx context.Context) bool {
	c, ok := ctx.(*fuse.Context)
	if !ok {
		return false
	}
	_, asked := fs.killRequests.Load(c.Cancel)
	return asked
}

// killedMode is mode with the bits the kernel clears on a modification
// by an unprivileged caller: setuid; setgid when the group may execute, or
// when the caller is not in the file's group (Linux 6.0's rule).
func killedMode(mode uint32, gid uint32, ctx context.Context) uint32 {
	m := mode &^ unix.S_ISUID
	if m&unix.S_ISGID != 0 && (m&unix.S_IXGRP != 0 || !callerInGroup(ctx, gid)) {
		m &^= unix.S_ISGID
	}
	return m
}

// callerInGroup reports whether the caller of a request is in group gid:
// its own gid, or one of its supplementary groups as /proc tells.
func callerInGroup(ctx context.Context, gid uint32) bool {
	c, ok := ctx.(*fuse.Context)
	if !ok {
		return false
	}
	if c.Gid == gid {
		return true
	}
	f, err := os.Open("/proc/" + strconv.Itoa(int(c.Pid)) + "/status")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		groups, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		for _, g := range strings.Fields(groups) {
			if g == strconv.Itoa(int(gid)) {
				return true
			}
		}
	}
	return false
}

// killSuidgid clears the node's setuid and setgid bits as killedMode
// says, if it has any.
func (n *node) killSuidgid(ctx context.Context) syscall.Errno {
	rel, ok := n.rel()
	if !ok {
		return 0
	}
	o, err := n.fsys.u.Lookup(rel)
	if err != nil || o.Stat.Mode&(unix.S_ISUID|unix.S_ISGID) == 0 {
		return errno(err)
	}
	m := killedMode(o.Stat.Mode, o.Stat.Gid, ctx) & 07777
	if m == o.Stat.Mode&07777 {
		return 0
	}
	_, err = n.fsys.u.Setattr(rel, overlay.Attr{Mode: &m})
	n.fsys.notify(false)
	// The kernel's cached mode is the old one.
	n.NotifyContent(-1, 0)
	return errno(err)
}

var (
	_ gofs.FileWriter    = (*file)(nil)
	_ gofs.FileAllocater = (*file)(nil)
)

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if f.n.fsys.killAsked(ctx) {
		if errno := f.n.killSuidgid(ctx); errno != 0 {
			return 0, errno
		}
	}
	return f.LoopbackFile.Write(ctx, data, off)
}

func (f *file) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	if f.n.fsys.killAsked(ctx) {
		if errno := f.n.killSuidgid(ctx); errno != 0 {
			return 0, errno
		}
	}
	return f.LoopbackFile.Writev(ctx, data, off)
}

// Allocate clears setuid and setgid bits for a caller other than root: an
// fallocate carries no flag that says whether the caller may keep them.
func (f *file) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	if c, ok := ctx.(*fuse.Context); ok && c.Uid != 0 && !f.n.fsys.rootless {
		if errno := f.n.killSuidgid(ctx); errno != 0 {
			return errno
		}
	}
	return f.LoopbackFile.Allocate(ctx, off, size, mode)
}
