package fs

import (
	"cmp"
	"context"
	"hash/fnv"
	"slices"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// dirHandle is a directory being read: the merged listing, each entry at
// an offset derived from its name (nameCookie), in the offsets' order, as
// ext4 hands out hashes. An offset so made means the same place in every
// listing of the directory, whatever was added or removed meanwhile: a
// read that continues from one (a READDIR without an open directory, see
// noOpendirFS) neither repeats nor skips an entry that stayed, as POSIX
// asks of readdir.
type dirHandle struct {
	n   *node
	rel string
	l   *dirListing
	pos int
}

var (
	_ gofs.FileReaddirenter = (*dirHandle)(nil)
	_ gofs.FileSeekdirer    = (*dirHandle)(nil)
	_ gofs.FileFsyncdirer   = (*dirHandle)(nil)
)

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	rel, ok := n.rel()
	if !ok {
		return nil, 0, syscall.ENOENT
	}
	d := &dirHandle{n: n, rel: rel}
	if errno := d.load(); errno != 0 {
		return nil, 0, errno
	}
	// The kernel may keep the listing: every change to a directory goes
	// through this daemon, and the kernel drops its cached listing itself
	// when an entry operation changes the directory. A warm walk then
	// costs no request at all.
	return d, fuse.FOPEN_CACHE_DIR, 0
}

// The offsets of "." and "..": every other name's is above them.
const (
	dotCookie    = 1
	dotDotCookie = 2
)

// nameCookie is the offset of name in a listing: 63 bits of its FNV-1a
// hash (the kernel passes offsets on as a signed off_t), above the dot
// entries'.
func nameCookie(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	c := h.Sum64() >> 1
	if c <= dotDotCookie {
		c += dotDotCookie + 1
	}
	return c
}

// dirListing is a directory's listing as dirHandle serves it, and the
// union's EntriesGen when it was made.
type dirListing struct {
	gen  uint64
	ents []fuse.DirEntry // read only: handles share it
}

// load takes the directory's listing: the one the node keeps if no entry
// changed since it was made, else a new one. Without OPENDIR each READDIR
// of a directory comes with a handle of its own (noOpendirFS), and a
// large directory takes hundreds: each making the whole listing again
// would make reading it quadratic (20,000 entries: 2.9 s instead of 0.3).
// The node keeps a listing until a read of it reaches the end.
func (d *dirHandle) load() syscall.Errno {
	gen := d.n.fsys.u.EntriesGen() // before reading: a change meanwhile makes it stale
	if l := d.n.listing.Load(); l != nil && l.gen == gen {
		d.l, d.pos = l, 0
		return 0
	}
	ents, err := d.n.fsys.u.ReadDir(d.rel)
	if err != nil {
		return errno(err)
	}
	list := make([]fuse.DirEntry, 0, len(ents)+2)
	parentIno := d.n.StableAttr().Ino
	if _, p := d.n.Parent(); p != nil {
		parentIno = p.StableAttr().Ino
	}
	for _, e := range ents {
		list = append(list, fuse.DirEntry{
			Name: e.Name,
			Mode: e.Mode,
			Ino:  d.n.fsys.inos.get(inoKey{e.Layer, e.Ino}).ino,
			Off:  nameCookie(e.Name),
		})
	}
	slices.SortFunc(list, func(a, b fuse.DirEntry) int {
		return cmp.Or(cmp.Compare(a.Off, b.Off), cmp.Compare(a.Name, b.Name))
	})
	// Two names of one directory with the same 63 bits (a chance of one
	// in 2^63 per pair) get neighbouring offsets: the listing stays
	// whole, only their offsets are not stable.
	for i := 1; i < len(list); i++ {
		if list[i].Off <= list[i-1].Off {
			list[i].Off = list[i-1].Off + 1
		}
	}
	list = slices.Insert(list, 0,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: d.n.StableAttr().Ino, Off: dotCookie},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parentIno, Off: dotDotCookie})
	d.l, d.pos = &dirListing{gen: gen, ents: list}, 0
	d.n.listing.Store(d.l)
	return 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if d.pos >= len(d.l.ents) {
		d.n.listing.CompareAndSwap(d.l, nil)
		return nil, 0
	}
	e := &d.l.ents[d.pos]
	d.pos++
	return e, 0
}

// Seekdir goes to the entry after offset off: the first entry for 0, with
// a new listing, as rewinddir expects.
func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == 0 {
		return d.load()
	}
	d.pos, _ = slices.BinarySearchFunc(d.l.ents, off+1, func(e fuse.DirEntry, t uint64) int { return cmp.Compare(e.Off, t) })
	return 0
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return 0
}

// noOpendirFS serves directories without OPENDIR and RELEASEDIR: it
// answers OPENDIR with ENOSYS where the kernel offers
// FUSE_NO_OPENDIR_SUPPORT, and the kernel then stops sending either and
// keeps listings in its cache (FOPEN_CACHE_DIR) by default. A walk of a
// tree costs two round trips less per directory (3,300 of the 5,000
// requests of a warm walk of the Go tree, BENCHMARKS.md issue 14). Each
// READDIR then comes without a handle: it is served through a handle
// opened for that request alone, a fresh listing, continued at the
// kernel's offset, which names the same place in every listing
// (dirHandle).
type noOpendirFS struct {
	fuse.RawFileSystem
	enabled bool // set once, by Init, before the first request
}

func (d *noOpendirFS) Init(s *fuse.Server) {
	d.enabled = s.KernelSettings().Flags64()&fuse.CAP_NO_OPENDIR_SUPPORT != 0
	d.RawFileSystem.Init(s)
}

func (d *noOpendirFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if d.enabled {
		return fuse.ENOSYS
	}
	return d.RawFileSystem.OpenDir(cancel, in, out)
}

func (d *noOpendirFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return d.read(cancel, in, out, d.RawFileSystem.ReadDir)
}

func (d *noOpendirFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return d.read(cancel, in, out, d.RawFileSystem.ReadDirPlus)
}

// read serves a READDIR or READDIRPLUS (see viaHandle).
func (d *noOpendirFS) read(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, read func(<-chan struct{}, *fuse.ReadIn, *fuse.DirEntryList) fuse.Status) fuse.Status {
	return d.viaHandle(cancel, &in.InHeader, &in.Fh, func() fuse.Status { return read(cancel, in, out) })
}

func (d *noOpendirFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return d.viaHandle(cancel, &in.InHeader, &in.Fh, func() fuse.Status { return d.RawFileSystem.FsyncDir(cancel, in) })
}

// viaHandle runs op, a request on the directory of h, through the
// kernel's handle *fh where it has one (a kernel that does not offer
// FUSE_NO_OPENDIR_SUPPORT), else through one of its own, open for op
// alone: *fh names it meanwhile.
func (d *noOpendirFS) viaHandle(cancel <-chan struct{}, h *fuse.InHeader, fh *uint64, op func() fuse.Status) fuse.Status {
	if *fh != 0 {
		return op()
	}
	var out fuse.OpenOut
	if st := d.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: *h, Flags: syscall.O_RDONLY | syscall.O_DIRECTORY}, &out); !st.Ok() {
		return st
	}
	*fh = out.Fh
	defer func() {
		d.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: *h, Fh: out.Fh})
		*fh = 0
	}()
	return op()
}
