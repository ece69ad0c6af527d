package overlay

import (
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// Lower is the merged view of the layers beneath an upper, as far as a
// commit needs it. Paths are clean, slash-separated and relative; "" is the
// root. A path that passes through a non-directory does not exist: layers
// never follow symlinks.
type Lower interface {
	// Lookup returns the merged object at rel, or nil when there is none.
	Lookup(rel string) (*Meta, error)
	// Names lists the merged children of the directory rel, sorted bytewise.
	Names(rel string) ([]string, error)
	// SameContent reports whether the regular file at rel holds exactly the
	// bytes of the file at path; the caller has already compared sizes.
	SameContent(rel, path string) (bool, error)
}

// Empty is the lower of a first layer: nothing.
type Empty struct{}

func (Empty) Lookup(string) (*Meta, error)             { return nil, nil }
func (Empty) Names(string) ([]string, error)           { return nil, nil }
func (Empty) SameContent(string, string) (bool, error) { return false, nil }

// Stack is the merged view of layer dirs, resolved on disk the way
// overlayfs resolves its lowers: the topmost non-directory wins, directories
// merge downward until a whiteout, an opaque directory or a non-directory.
type Stack struct {
	top []at // layer dirs, topmost first
	// Layers are immutable while a Stack reads them, so what it learns is
	// cached for good. mu guards the caches: a mount resolves paths from
	// many goroutines.
	mu sync.Mutex
	// dirs caches, for a merged directory, the layer directories that
	// contribute to it (topmost first). A commit looks up every upper path,
	// so each parent is resolved once instead of once per child.
	dirs map[string][]Source
	// index caches the merged entries of a directory, built on first use
	// from one getdents per contributing layer: after that, a lookup in
	// that directory (found or not) costs no syscall.
	index map[string]map[string]LowerEntry
}

// LowerEntry is a name of a merged lower directory, served by the
// topmost layer that has it.
type LowerEntry struct {
	Dir   at     // the layer directory holding it
	Layer int    // which layer: an index into Layers
	Mode  uint32 // S_IFMT bits
	Ino   uint64 // in the layer's filesystem
}

// Source is a layer directory contributing to a merged directory.
type Source struct {
	Dir   at
	Layer int // index into Layers
}

// at is the entry's object on disk.
func (e LowerEntry) at(name string) at { return e.Dir.join(name) }

// NewStack returns the merged view of layer dirs, given base first (the
// order of overlayfs's lowerdir reversed, and of an image's layers), by
// their paths.
func NewStack(layers ...string) *Stack {
	roots := make([]at, len(layers))
	for i, l := range layers {
		roots[i] = atPath(l)
	}
	return newStack(roots)
}

// newStack is NewStack of layer dirs named by at (open descriptors).
func newStack(layers []at) *Stack {
	top := slices.Clone(layers)
	slices.Reverse(top)
	root := make([]Source, len(top))
	for i, d := range top {
		root[i] = Source{Dir: d, Layer: i}
	}
	return &Stack{top: top, dirs: map[string][]Source{"": root}, index: map[string]map[string]LowerEntry{}}
}

// Entries returns the merged entries of the directory rel (none when rel
// is not a merged directory).
func (s *Stack) Entries(rel string) (map[string]LowerEntry, error) {
	s.mu.Lock()
	idx, ok := s.index[rel]
	s.mu.Unlock()
	if ok {
		return idx, nil
	}
	srcs, err := s.Sources(rel)
	if err != nil {
		return nil, err
	}
	idx = map[string]LowerEntry{}
	hidden := map[string]bool{}
	for _, src := range srcs {
		dir := src.Dir
		ents, err := readDirents(dir)
		if err != nil {
			return nil, err
		}
		var whiteouts []string
		for _, e := range ents {
			if IsReservedName(e.name) {
				if e.name != OpaqueMarker {
					whiteouts = append(whiteouts, e.name[len(WhiteoutPrefix):])
				}
				continue
			}
			if _, seen := idx[e.name]; seen || hidden[e.name] {
				continue
			}
			mode := dtToMode(e.typ)
			if mode == 0 || mode == unix.S_IFCHR {
				var st unix.Stat_t
				if err := dir.join(e.name).lstat(&st); err != nil {
					return nil, dir.join(e.name).err("lstat", err)
				}
				if IsWhiteoutDevice(&st) {
					hidden[e.name] = true
					continue
				}
				mode = st.Mode & unix.S_IFMT
			}
			idx[e.name] = LowerEntry{Dir: dir, Layer: src.Layer, Mode: mode, Ino: e.ino}
		}
		for _, w := range whiteouts {
			if _, here := idx[w]; !here {
				hidden[w] = true
			}
		}
	}
	s.mu.Lock()
	s.index[rel] = idx
	s.mu.Unlock()
	return idx, nil
}

// Sources returns the layer directories that make up the merged directory
// rel, topmost first; none when rel is not a directory.
func (s *Stack) Sources(rel string) ([]Source, error) {
	s.mu.Lock()
	v, ok := s.dirs[rel]
	s.mu.Unlock()
	if ok {
		return v, nil
	}
	pdir, name := Split(rel)
	parent, err := s.Sources(pdir)
	if err != nil {
		return nil, err
	}
	var out []Source
	for i, src := range parent {
		dir := src.Dir
		p := dir.join(name)
		var st unix.Stat_t
		err := p.lstat(&st)
		if errors.Is(err, unix.ENOENT) {
			if i == len(parent)-1 {
				break
			}
			if hidden, err := exists(dir.join(WhiteoutPrefix + name)); err != nil || hidden {
				if err != nil {
					return nil, err
				}
				break
			}
			continue
		}
		if err != nil {
			return nil, p.err("lstat", err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			break // a whiteout or a non-directory ends the merge
		}
		out = append(out, Source{Dir: p, Layer: src.Layer})
		if opaque, err := isOpaqueDir(p); err != nil || opaque {
			if err != nil {
				return nil, err
			}
			break
		}
	}
	s.mu.Lock()
	s.dirs[rel] = out
	s.mu.Unlock()
	return out, nil
}

// locate finds the on-disk object serving the merged path rel, with its
// lstat result; ok is false when there is none.
func (s *Stack) locate(rel string, st *unix.Stat_t) (p at, ok bool, err error) {
	if rel == "" {
		if len(s.top) == 0 {
			return at{}, false, nil
		}
		return s.top[0], true, s.top[0].lstat(st)
	}
	pdir, name := Split(rel)
	parent, err := s.Sources(pdir)
	if err != nil {
		return at{}, false, err
	}
	for i, src := range parent {
		dir := src.Dir
		p := dir.join(name)
		err := p.lstat(st)
		if errors.Is(err, unix.ENOENT) {
			if i == len(parent)-1 {
				return at{}, false, nil // a .wh. marker in the last layer hides nothing
			}
			if hidden, err := exists(dir.join(WhiteoutPrefix + name)); err != nil || hidden {
				return at{}, false, err
			}
			continue
		}
		if err != nil {
			return at{}, false, p.err("lstat", err)
		}
		if IsWhiteoutDevice(st) {
			return at{}, false, nil
		}
		return p, true, nil
	}
	return at{}, false, nil
}

func (s *Stack) Lookup(rel string) (*Meta, error) {
	var st unix.Stat_t
	p, ok, err := s.locate(rel, &st)
	if !ok || err != nil {
		return nil, err
	}
	e, err := statWith(p, &st)
	if err != nil {
		return nil, err
	}
	if e.Whiteout {
		return nil, nil
	}
	return &e.Meta, nil
}

func (s *Stack) Names(rel string) ([]string, error) {
	idx, err := s.Entries(rel)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(idx))
	for name := range idx {
		out = append(out, name)
	}
	slices.Sort(out)
	return out, nil
}

func (s *Stack) SameContent(rel, p string) (bool, error) {
	var st unix.Stat_t
	lp, ok, err := s.locate(rel, &st)
	if !ok || err != nil {
		return false, err
	}
	return sameFileContent(lp, p)
}

// isOpaqueDir reports whether a layer directory hides the layers below.
// One listxattr answers for all the marker names.
func isOpaqueDir(dir at) (bool, error) {
	raw, err := readXattrs(dir)
	if err != nil {
		return false, err
	}
	if mk, _ := splitXattrs(raw); mk.opaque {
		return true, nil
	}
	return exists(dir.join(OpaqueMarker))
}

func exists(p at) (bool, error) {
	var st unix.Stat_t
	err := p.lstat(&st)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, p.err("lstat", err)
	}
	return true, nil
}

// sameFileContent compares a lower file with the file at path b byte for
// byte.
func sameFileContent(a at, b string) (bool, error) {
	fd, err := a.open(unix.O_RDONLY, 0)
	if err != nil {
		return false, a.err("open", err)
	}
	fa := os.NewFile(uintptr(fd), a.String())
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if ea == io.EOF || ea == io.ErrUnexpectedEOF {
			return eb == ea, nil
		}
		if ea != nil {
			return false, ea
		}
		if eb != nil {
			return false, eb
		}
	}
}
