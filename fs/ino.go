package fs

import "sync"

// inoKey names a layer object: its layer (overlay.UpperLayer or a lower)
// and its inode number there.
type inoKey struct {
	layer int
	ino   uint64
}

// ident is what the kernel knows an object by: the inode number it sees,
// and a generation that tells two go-fuse inodes of one number apart.
type ident struct {
	ino, gen uint64
}

// inoTable numbers the union's objects. Numbers are handed out in order
// and never reused during the mount; a copied-up object's upper file is
// registered as an alias of its origin's number, so st_ino survives a
// copy-up as it does on the kernel's overlayfs.
type inoTable struct {
	mu      sync.Mutex
	m       map[inoKey]ident
	next    uint64
	nextGen uint64
}

func (t *inoTable) init() {
	if t.m == nil {
		t.m = map[inoKey]ident{}
		t.next = 2 // 1 is the root
	}
}

func (t *inoTable) get(k inoKey) ident {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	if id, ok := t.m[k]; ok {
		return id
	}
	t.next++
	t.m[k] = ident{ino: t.next}
	return t.m[k]
}

func (t *inoTable) alias(k inoKey, id ident) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.init()
	t.m[k] = id
}

// newGen returns a generation no identity has had: the high bit keeps it
// apart from the path-derived ones of lower hardlinks (see identity).
func (t *inoTable) newGen() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nextGen++
	return 1<<63 | t.nextGen
}

// forget drops a layer object that no longer exists, whose inode number
// the layer's filesystem may give to a new file.
func (t *inoTable) forget(k inoKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, k)
}

// isLowerLinkGen tells the path-derived generations of lower hardlink
// nodes (see filesystem.identity) from the fresh ones of newGen.
func isLowerLinkGen(gen uint64) bool { return gen != 0 && gen&(1<<63) == 0 }
