package fs

import "sync"

// inoKey names a layer object: its layer (overlay.UpperLayer or a lower)
// and its inode number there.
type inoKey struct {
	layer int
	ino   uint64
}

// inoTable numbers the union's objects. Numbers are handed out in order
// and never reused during the mount; a copied-up object's upper file is
// registered as an alias of its origin's number, so st_ino survives a
// copy-up as it does on the kernel's overlayfs.
type inoTable struct {
	mu   sync.Mutex
	m    map[inoKey]uint64
	next uint64
}

func (t *inoTable) get(k inoKey) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ino, ok := t.m[k]; ok {
		return ino
	}
	if t.m == nil {
		t.m = map[inoKey]uint64{}
		t.next = 2 // 1 is the root
	}
	t.next++
	t.m[k] = t.next
	return t.next
}

func (t *inoTable) alias(k inoKey, ino uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[inoKey]uint64{}
		t.next = 2
	}
	t.m[k] = ino
}

// forget drops a layer object that no longer exists, whose inode number
// the layer's filesystem may give to a new file.
func (t *inoTable) forget(k inoKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, k)
}
