package fs

import (
	"context"
	"errors"
	"hash/fnv"
	"log"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/overlay"
)

// filesystem is one mount: the union it serves and the identities it has
// handed to the kernel.
type filesystem struct {
	u        *overlay.Union
	inos     inoTable
	root     *node
	rootless bool
	// passthrough: the kernel may back open files with layer files (root
	// only; go-fuse turns it off by itself where the kernel refuses).
	passthrough bool
	timeout     time.Duration
	noSync      bool // Options.NoSync

	pendingMu sync.Mutex
	pending   []pendingNotify

	// pollName names the root's poll file while a mount sets up (pollHack).
	pollName atomic.Pointer[string]
	// killRequests are the requests in flight that carry the kernel's
	// request to clear setuid and setgid bits (kill.go).
	killRequests sync.Map
}

// node is a FUSE inode. It holds no path: paths come from go-fuse's tree
// (so renames need no bookkeeping here), and the union resolves them.
type node struct {
	gofs.Inode
	fsys *filesystem

	// Passthrough bookkeeping (see file.go): how many handles are open on
	// the node, and whether the kernel's backing file for them is a lower
	// file. While it is, a handle on the upper copy must not use
	// passthrough I/O, or the kernel would write to the lower.
	mu           sync.Mutex
	opens        int
	backingLower bool
	// staled: this node already sent an open back with ESTALE (file.go).
	staled bool

	// listing is this directory's last listing, while a read of it is
	// under way (dir.go).
	listing atomic.Pointer[dirListing]
}

var (
	_ gofs.NodeLookuper       = (*node)(nil)
	_ gofs.NodeGetattrer      = (*node)(nil)
	_ gofs.NodeSetattrer      = (*node)(nil)
	_ gofs.NodeStatxer        = (*node)(nil)
	_ gofs.NodeOpener         = (*node)(nil)
	_ gofs.NodeCreater        = (*node)(nil)
	_ gofs.NodeMkdirer        = (*node)(nil)
	_ gofs.NodeMknoder        = (*node)(nil)
	_ gofs.NodeSymlinker      = (*node)(nil)
	_ gofs.NodeLinker         = (*node)(nil)
	_ gofs.NodeUnlinker       = (*node)(nil)
	_ gofs.NodeRmdirer        = (*node)(nil)
	_ gofs.NodeRenamer        = (*node)(nil)
	_ gofs.NodeReadlinker     = (*node)(nil)
	_ gofs.NodeGetxattrer     = (*node)(nil)
	_ gofs.NodeSetxattrer     = (*node)(nil)
	_ gofs.NodeRemovexattrer  = (*node)(nil)
	_ gofs.NodeListxattrer    = (*node)(nil)
	_ gofs.NodeStatfser       = (*node)(nil)
	_ gofs.NodeOpendirHandler = (*node)(nil)
)

// rel is the node's path in the union. An unlinked node has none.
func (n *node) rel() (string, bool) {
	if n == n.fsys.root {
		return "", true
	}
	p := n.Path(nil)
	return p, p != ""
}

func (n *node) child(name string) (string, bool) {
	p, ok := n.rel()
	return overlay.Join(p, name), ok
}

// errno maps an error from the union to the errno the caller sees. An
// error that carries none is a fault of the layers (a malformed override
// record, say): logged, and EIO for the caller.
func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	log.Printf("layerfs: %v", err)
	return syscall.EIO
}

func caller(ctx context.Context) overlay.Owner {
	if c, ok := fuse.FromContext(ctx); ok {
		return overlay.Owner{UID: c.Uid, GID: c.Gid}
	}
	return overlay.Owner{}
}

// identity is the StableAttr of a union object. Objects are numbered by
// the layer object that serves them; a copy-up keeps the number of its
// origin (see inoTable), so inode numbers are stable for the mount's life
// and hardlinks in one layer share one inode. Two names of one lower
// hardlink group get their own go-fuse inodes (same number, another
// generation): a copy-up through one name must not be applied to the
// other, as with the kernel's overlayfs.
func (fs *filesystem) identity(rel string, o *overlay.Object) gofs.StableAttr {
	id := fs.inos.get(inoKey{o.Layer, o.Stat.Ino})
	attr := gofs.StableAttr{Mode: o.Stat.Mode & unix.S_IFMT, Ino: id.ino, Gen: id.gen}
	if !o.InUpper() && !o.IsDir() && o.Stat.Nlink > 1 {
		h := fnv.New64a()
		h.Write([]byte(rel))
		attr.Gen = h.Sum64()>>1 | 1
	}
	return attr
}

// fill converts an object's stat to FUSE attributes.
func (fs *filesystem) fill(o *overlay.Object, out *fuse.Attr) {
	st := &o.Stat
	out.Ino, out.Size, out.Blocks = st.Ino, uint64(st.Size), uint64(st.Blocks)
	out.Atime, out.Atimensec = uint64(st.Atim.Sec), uint32(st.Atim.Nsec)
	out.Mtime, out.Mtimensec = uint64(st.Mtim.Sec), uint32(st.Mtim.Nsec)
	out.Ctime, out.Ctimensec = uint64(st.Ctim.Sec), uint32(st.Ctim.Nsec)
	out.Mode, out.Nlink = st.Mode, uint32(st.Nlink)
	out.Uid, out.Gid, out.Rdev = st.Uid, st.Gid, uint32(st.Rdev)
	out.Blksize = uint32(st.Blksize)
	if o.IsDir() && o.Merged {
		// As the kernel's overlayfs: counting subdirectories across layers
		// is not worth it, and 1 tells find not to rely on the count.
		out.Nlink = 1
	}
}

func (fs *filesystem) entryOut(o *overlay.Object, out *fuse.EntryOut) {
	fs.fill(o, &out.Attr)
	out.SetEntryTimeout(fs.timeout)
	out.SetAttrTimeout(fs.timeout)
}

// newChild turns a looked-up or created object into the node the kernel
// gets for it.
func (n *node) newChild(ctx context.Context, rel string, o *overlay.Object, out *fuse.EntryOut) *gofs.Inode {
	n.fsys.entryOut(o, out)
	return n.NewInode(ctx, &node{fsys: n.fsys}, n.fsys.identity(rel, o))
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if p := n.fsys.pollName.Load(); p != nil && n == n.fsys.root && name == *p {
		// Not cached: the name is the union's again once the poll is done.
		out.Attr.Mode = syscall.S_IFREG | 0o444
		return n.NewInode(ctx, &pollNode{}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ^uint64(0) - 1}), 0
	}
	rel, ok := n.child(name)
	if !ok {
		return nil, syscall.ENOENT
	}
	o, err := n.fsys.u.Lookup(rel)
	if err != nil {
		return nil, errno(err)
	}
	return n.newChild(ctx, rel, &o, out), 0
}

func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if rel, ok := n.rel(); ok {
		if o, err := n.fsys.u.Lookup(rel); err == nil {
			n.fsys.fill(&o, &out.Attr)
			out.SetTimeout(n.fsys.timeout)
			return 0
		} else if f == nil {
			return errno(err)
		}
	}
	// An open file whose names are gone: its handle still knows it.
	if fg, ok := f.(gofs.FileGetattrer); ok {
		return fg.Getattr(ctx, out)
	}
	return syscall.ENOENT
}

// Statx is left to Getattr (ENOSYS makes the kernel fall back): statx
// through a handle would describe the layer file, not the merged object.
func (n *node) Statx(ctx context.Context, f gofs.FileHandle, flags, mask uint32, out *fuse.StatxOut) syscall.Errno {
	return syscall.ENOSYS
}

func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	rel, ok := n.rel()
	if !ok {
		if fs, ok := f.(gofs.FileSetattrer); ok {
			return fs.Setattr(ctx, in, out)
		}
		return syscall.ENOENT
	}
	var a overlay.Attr
	if m, ok := in.GetMode(); ok {
		a.Mode = &m
	}
	if uid, ok := in.GetUID(); ok {
		a.UID = &uid
	}
	if gid, ok := in.GetGID(); ok {
		a.GID = &gid
	}
	if sz, ok := in.GetSize(); ok {
		s := int64(sz)
		a.Size = &s
	}
	if in.Valid&(fuse.FATTR_ATIME|fuse.FATTR_ATIME_NOW) != 0 {
		a.Atime = timespec(in.Valid&fuse.FATTR_ATIME_NOW != 0, in.Atime, in.Atimensec)
	}
	if in.Valid&(fuse.FATTR_MTIME|fuse.FATTR_MTIME_NOW) != 0 {
		a.Mtime = timespec(in.Valid&fuse.FATTR_MTIME_NOW != 0, in.Mtime, in.Mtimensec)
	}
	if in.Valid&fuse.FATTR_KILL_SUIDGID != 0 && a.Mode == nil && !n.fsys.rootless {
		// The kernel asks the server to drop setuid/setgid with this
		// change (a truncate by someone without CAP_FSETID). Rootless,
		// the mounting user stands for every owner, root too, as under
		// a fake root: nothing is dropped (kill.go).
		o, err := n.fsys.u.Lookup(rel)
		if err == nil && o.Stat.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
			m := killedMode(o.Stat.Mode, o.Stat.Gid, ctx) & 07777
			a.Mode = &m
		}
	}
	o, err := n.fsys.u.Setattr(rel, a)
	n.fsys.notify(false)
	if err != nil {
		return errno(err)
	}
	n.fsys.fill(&o, &out.Attr)
	// The kernel takes st_ino from every attribute reply, and go-fuse
	// only puts the node's number into GETATTR's.
	out.Ino = n.StableAttr().Ino
	// go-fuse leaves the reply's timeout at zero, which would make the
	// kernel ask again at once (research/fuse.md §5).
	out.SetTimeout(n.fsys.timeout)
	return 0
}

func timespec(now bool, sec uint64, nsec uint32) *unix.Timespec {
	if now {
		return &unix.Timespec{Nsec: unix.UTIME_NOW}
	}
	return &unix.Timespec{Sec: int64(sec), Nsec: int64(nsec)}
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	rel, ok := n.child(name)
	if !ok {
		return nil, nil, 0, syscall.ENOENT
	}
	fd, o, err := n.fsys.u.Create(rel, int(flags)&^unix.O_APPEND, mode, caller(ctx))
	n.fsys.notify(false)
	if err != nil {
		return nil, nil, 0, errno(err)
	}
	ch := n.newChild(ctx, rel, &o, out)
	cn := ch.Operations().(*node)
	f, fuseFlags := cn.openHandle(fd, &o, cn.killable(ctx, flags, &o))
	return ch, f, fuseFlags, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	rel, ok := n.child(name)
	if !ok {
		return nil, syscall.ENOENT
	}
	o, err := n.fsys.u.Mkdir(rel, mode, caller(ctx))
	n.fsys.notify(false)
	if err != nil {
		return nil, errno(err)
	}
	return n.newChild(ctx, rel, &o, out), 0
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	rel, ok := n.child(name)
	if !ok {
		return nil, syscall.ENOENT
	}
	o, err := n.fsys.u.Mknod(rel, mode, uint64(rdev), caller(ctx))
	n.fsys.notify(false)
	if err != nil {
		return nil, errno(err)
	}
	return n.newChild(ctx, rel, &o, out), 0
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	rel, ok := n.child(name)
	if !ok {
		return nil, syscall.ENOENT
	}
	o, err := n.fsys.u.Symlink(target, rel, caller(ctx))
	n.fsys.notify(false)
	if err != nil {
		return nil, errno(err)
	}
	return n.newChild(ctx, rel, &o, out), 0
}

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	rel, ok := n.child(name)
	tn, isNode := target.(*node)
	if !ok || !isNode {
		return nil, syscall.ENOENT
	}
	trel, ok := tn.rel()
	if !ok {
		return nil, syscall.ENOENT
	}
	o, err := n.fsys.u.Link(trel, rel)
	n.fsys.notify(false)
	if err != nil {
		return nil, errno(err)
	}
	// The source was copied up (if it was not yet); both names are now
	// one upper inode. It kept the source's number, and then this is the
	// source's node again; or it left a lower hardlink group and has a new
	// number, and the source's node is stale.
	return n.newChild(ctx, rel, &o, out), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	rel, ok := n.child(name)
	if !ok {
		return syscall.ENOENT
	}
	err := n.fsys.u.Unlink(rel)
	n.fsys.notify(false)
	return errno(err)
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	rel, ok := n.child(name)
	if !ok {
		return syscall.ENOENT
	}
	err := n.fsys.u.Rmdir(rel)
	n.fsys.notify(false)
	return errno(err)
}

func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, isNode := newParent.(*node)
	oldRel, ok1 := n.child(name)
	if !isNode {
		return syscall.EXDEV
	}
	newRel, ok2 := np.child(newName)
	if !ok1 || !ok2 {
		return syscall.ENOENT
	}
	moved := n.GetChild(name)
	err := n.fsys.u.Rename(oldRel, newRel, uint(flags))
	if err == nil && moved != nil && isLowerLinkGen(moved.StableAttr().Gen) {
		// A lower hardlink copied up on its way: its node is stale, and
		// after the rename the kernel knows it by the new name.
		n.fsys.queue(pendingNotify{rel: newRel, entry: true})
	}
	n.fsys.notify(false)
	return errno(err)
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	rel, ok := n.rel()
	if !ok {
		return nil, syscall.ENOENT
	}
	t, err := n.fsys.u.Readlink(rel)
	if err != nil {
		return nil, errno(err)
	}
	return []byte(t), 0
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	rel, ok := n.rel()
	if !ok {
		return 0, syscall.ENOENT
	}
	v, err := n.fsys.u.GetXattr(rel, attr)
	if err != nil {
		return 0, errno(err)
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	rel, ok := n.rel()
	if !ok {
		return 0, syscall.ENOENT
	}
	names, err := n.fsys.u.ListXattr(rel)
	if err != nil {
		return 0, errno(err)
	}
	size := 0
	for _, name := range names {
		size += len(name) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	i := 0
	for _, name := range names {
		i += copy(dest[i:], name)
		dest[i] = 0
		i++
	}
	return uint32(size), 0
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	rel, ok := n.rel()
	if !ok {
		return syscall.ENOENT
	}
	err := n.fsys.u.SetXattr(rel, attr, data, int(flags))
	n.fsys.notify(false)
	return errno(err)
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	rel, ok := n.rel()
	if !ok {
		return syscall.ENOENT
	}
	err := n.fsys.u.RemoveXattr(rel, attr)
	n.fsys.notify(false)
	return errno(err)
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if err := n.fsys.u.Statfs(&st); err != nil {
		return errno(err)
	}
	out.FromStatfsT(&st)
	return 0
}

// copiedUp keeps a copied-up object's inode number: its upper file
// becomes an alias of the number its lower file had, as st_ino survives a
// copy-up on the kernel's overlayfs. The exception is a file of a lower
// hardlink group: its copy leaves the group and, as on the kernel's
// overlayfs, gets a number of its own; the kernel must look the name up
// again to meet it. Either way the kernel's cached attributes are stale (a
// copied-up directory is a merged one, nlink 1). Those kernel
// notifications are queued: they may only be sent once the union's lock is
// released, and some only off the request path (see notify).
func (fs *filesystem) copiedUp(rel string, from, to overlay.Object) {
	split := !from.IsDir() && from.Stat.Nlink > 1
	if !split {
		fs.inos.alias(inoKey{to.Layer, to.Stat.Ino}, fs.inos.get(inoKey{from.Layer, from.Stat.Ino}))
	}
	fs.queue(pendingNotify{rel: rel, entry: split})
}

type pendingNotify struct {
	rel   string
	entry bool // drop the name (a new identity), not just the attributes
}

func (fs *filesystem) queue(p pendingNotify) {
	fs.pendingMu.Lock()
	fs.pending = append(fs.pending, p)
	fs.pendingMu.Unlock()
}

// notify sends the queued invalidations. Attribute invalidations are
// sent at once: the kernel takes no lock for them, and the caller's next
// stat must not meet stale attributes. Dropping a name locks its parent
// directory, which a create, link or rename request already holds; so
// that waits for the request to end, unless sync says the request holds
// no directory lock (open).
func (fs *filesystem) notify(sync bool) {
	fs.pendingMu.Lock()
	todo := fs.pending
	fs.pending = nil
	fs.pendingMu.Unlock()
	var entries []pendingNotify
	for _, p := range todo {
		if p.entry {
			entries = append(entries, p)
		} else if n := fs.nodeAt(p.rel); n != nil {
			n.NotifyContent(-1, 0)
		}
	}
	if len(entries) == 0 {
		return
	}
	send := func() {
		for _, p := range entries {
			dir, name := overlay.Split(p.rel)
			if parent := fs.nodeAt(dir); parent != nil {
				parent.NotifyEntry(name)
			}
		}
	}
	if sync {
		send()
		return
	}
	// The request may hold the very lock the invalidation needs, so it
	// cannot simply wait; but mostly it does not, and then the caller's
	// next call already meets the new name. Wait a moment for that.
	done := make(chan struct{})
	go func() {
		send()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(50 * time.Millisecond):
	}
}

// nodeAt finds the node the kernel holds for rel, if any.
func (fs *filesystem) nodeAt(rel string) *gofs.Inode {
	n := fs.root.EmbeddedInode()
	for _, name := range strings.Split(rel, "/") {
		if name == "" {
			continue
		}
		if n = n.GetChild(name); n == nil {
			return nil
		}
	}
	return n
}
