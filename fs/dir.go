package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// dirHandle is an open directory: a snapshot of the merged listing taken
// at open, so offsets are stable for the handle's life; a seek to 0
// takes a new one, as rewinddir expects.
type dirHandle struct {
	n    *node
	rel  string
	ents []fuse.DirEntry
	pos  int
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

func (d *dirHandle) load() syscall.Errno {
	ents, err := d.n.fsys.u.ReadDir(d.rel)
	if err != nil {
		return errno(err)
	}
	d.ents = make([]fuse.DirEntry, 0, len(ents)+2)
	d.ents = append(d.ents, fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: d.n.StableAttr().Ino})
	parentIno := d.n.StableAttr().Ino
	if _, p := d.n.Parent(); p != nil {
		parentIno = p.StableAttr().Ino
	}
	d.ents = append(d.ents, fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parentIno})
	for _, e := range ents {
		d.ents = append(d.ents, fuse.DirEntry{
			Name: e.Name,
			Mode: e.Mode,
			Ino:  d.n.fsys.inos.get(inoKey{e.Layer, e.Ino}).ino,
		})
	}
	d.pos = 0
	return 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if d.pos >= len(d.ents) {
		return nil, 0
	}
	e := &d.ents[d.pos]
	d.pos++
	e.Off = uint64(d.pos)
	return e, 0
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == 0 {
		return d.load()
	}
	if off > uint64(len(d.ents)) {
		return syscall.EINVAL
	}
	d.pos = int(off)
	return 0
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return 0
}
