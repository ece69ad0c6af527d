package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/overlay"
)

// file is an open file: a LoopbackFile on the layer file, which go-fuse
// registers with the kernel for passthrough I/O (kernel >= 6.9, root).
//
// The trap (research/fuse.md §1.4): the kernel keeps one backing file per
// inode, registered by the first open, and every later open of the inode
// is served from it, opened anew with that open's flags. If the first
// open was read-only on a lower file, a later open for writing (which
// copied the file up) would be wired to the LOWER file: its writes would
// corrupt the layer. Two defences:
//   - the lowers are read-only mounts in the daemon (robind.go), so such a
//     backing open fails instead of writing;
//   - an open that copied the file up while a lower backing is pinned is
//     answered ESTALE after the copy-up has given the path a new identity.
//     The kernel then looks the name up again (LOOKUP_REVAL), gets a new
//     inode with no backing yet, and retries the open there. The readers
//     keep the old inode and the lower file.
type file struct {
	*gofs.LoopbackFile
	n     *node
	lower bool // opened on a lower file
}

var (
	_ gofs.FileReleaser = (*file)(nil)
	_ gofs.FileFsyncer  = (*file)(nil)
)

// Fsync syncs the layer file, unless the mount skips syncs (Options.NoSync).
func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if f.n.fsys.noSync {
		return 0
	}
	return f.LoopbackFile.Fsync(ctx, flags)
}

// openHandle wraps an fd opened on o and decides its open flags.
// killable: the open may write a setuid or setgid file and its caller may
// lack CAP_FSETID (kill.go): writes must reach the daemon.
func (n *node) openHandle(fd int, o *overlay.Object, killable bool) (*file, uint32) {
	f := &file{LoopbackFile: gofs.NewLoopbackFile(fd).(*gofs.LoopbackFile), n: n, lower: !o.InUpper()}
	// No FLUSH on close(2): locks are the kernel's own (no lock
	// forwarding), and the fd is closed at RELEASE anyway.
	flags := uint32(fuse.FOPEN_NOFLUSH)
	n.mu.Lock()
	if n.opens == 0 {
		n.backingLower = f.lower
	}
	n.opens++
	if n.backingLower && !f.lower || killable {
		// Reads and writes come to the daemon (a passthrough open of the
		// node may hold the backing file, so the handle stays a
		// passthrough one, for mmap): past a lower backing file that a
		// retry did not leave, to the upper fd; past the kernel, so that
		// a write clears setuid bits.
		flags |= fuse.FOPEN_DIRECT_IO
	}
	n.mu.Unlock()
	return f, flags
}

// killable reports whether an open with flags by the caller of ctx may
// write o and have to clear its setuid or setgid bits: a writable open, by
// someone other than root, of a file that has them (as root).
func (n *node) killable(ctx context.Context, flags uint32, o *overlay.Object) bool {
	if n.fsys.rootless || flags&unix.O_ACCMODE == unix.O_RDONLY || o.Stat.Mode&(unix.S_ISUID|unix.S_ISGID) == 0 {
		return false
	}
	c, ok := ctx.(*fuse.Context)
	return !ok || c.Uid != 0
}

func (f *file) Release(ctx context.Context) syscall.Errno {
	f.n.mu.Lock()
	f.n.opens--
	f.n.mu.Unlock()
	return f.LoopbackFile.Release(ctx)
}

// Getattr through a handle describes the merged object, not the layer
// file (owners may be overridden, merged dirs have nlink 1). A file whose
// names are all gone from the union is described by its layer file, as on
// the kernel's overlayfs: an upper file has no link left, a lower file the
// union deleted keeps its layer's.
func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	if _, ok := f.n.rel(); ok {
		return f.n.Getattr(ctx, nil, out)
	}
	st, err := overlay.StatFd(f.fd())
	if err != nil {
		return errno(err)
	}
	o := overlay.Object{Stat: st}
	f.n.fsys.fill(&o, &out.Attr)
	out.Ino = f.n.StableAttr().Ino
	out.SetTimeout(0)
	return 0
}

// fd is the layer file's descriptor.
func (f *file) fd() int {
	fd, _ := f.PassthroughFd()
	return fd
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	rel, ok := n.rel()
	if !ok {
		return nil, 0, syscall.ENOENT
	}
	// The kernel tracks the append offset; the daemon writes at offsets.
	fl := int(flags) &^ (unix.O_APPEND | fuse.FMODE_EXEC)
	fd, o, err := n.fsys.u.Open(rel, fl)
	// An open holds no directory lock: the kernel can be told at once, so
	// that the caller's next stat already meets a split hardlink's new
	// number.
	n.fsys.notify(true)
	if err != nil {
		return nil, 0, errno(err)
	}
	if o.InUpper() && n.fsys.passthrough {
		n.mu.Lock()
		pinned := n.opens > 0 && n.backingLower && !n.staled
		if pinned {
			n.staled = true
		}
		n.mu.Unlock()
		if pinned {
			unix.Close(fd)
			n.fsys.inos.alias(inoKey{o.Layer, o.Stat.Ino}, ident{n.StableAttr().Ino, n.fsys.inos.newGen()})
			return nil, 0, syscall.ESTALE
		}
	}
	f, fuseFlags := n.openHandle(fd, &o, n.killable(ctx, flags, &o))
	return f, fuseFlags, 0
}
