package overlay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

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
	top []string // layer dirs, topmost first
	// dirs caches, for a merged directory, the layer directories that
	// contribute to it (topmost first). A commit looks up every upper path,
	// so each parent is resolved once instead of once per child.
	dirs map[string][]string
}

// NewStack returns the merged view of layers, given base first (the order
// of overlayfs's lowerdir reversed, and of an image's layers).
func NewStack(layers ...string) *Stack {
	top := slices.Clone(layers)
	slices.Reverse(top)
	return &Stack{top: top, dirs: map[string][]string{"": top}}
}

// sources returns the layer directories that make up the merged directory
// rel; none when rel is not a directory.
func (s *Stack) sources(rel string) ([]string, error) {
	if v, ok := s.dirs[rel]; ok {
		return v, nil
	}
	pdir, name := Split(rel)
	parent, err := s.sources(pdir)
	if err != nil {
		return nil, err
	}
	var out []string
	for i, dir := range parent {
		p := filepath.Join(dir, name)
		var st unix.Stat_t
		err := unix.Lstat(p, &st)
		if errors.Is(err, unix.ENOENT) {
			if i == len(parent)-1 {
				break
			}
			if hidden, err := exists(filepath.Join(dir, WhiteoutPrefix+name)); err != nil || hidden {
				if err != nil {
					return nil, err
				}
				break
			}
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "lstat", Path: p, Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			break // a whiteout or a non-directory ends the merge
		}
		out = append(out, p)
		if opaque, err := isOpaqueDir(p); err != nil || opaque {
			if err != nil {
				return nil, err
			}
			break
		}
	}
	s.dirs[rel] = out
	return out, nil
}

// locate finds the on-disk object serving the merged path rel, with its
// lstat result; "" when there is none.
func (s *Stack) locate(rel string, st *unix.Stat_t) (string, error) {
	if rel == "" {
		if len(s.top) == 0 {
			return "", nil
		}
		return s.top[0], unix.Lstat(s.top[0], st)
	}
	pdir, name := Split(rel)
	parent, err := s.sources(pdir)
	if err != nil {
		return "", err
	}
	for i, dir := range parent {
		p := filepath.Join(dir, name)
		err := unix.Lstat(p, st)
		if errors.Is(err, unix.ENOENT) {
			if i == len(parent)-1 {
				return "", nil // a .wh. marker in the last layer hides nothing
			}
			if hidden, err := exists(filepath.Join(dir, WhiteoutPrefix+name)); err != nil || hidden {
				return "", err
			}
			continue
		}
		if err != nil {
			return "", &os.PathError{Op: "lstat", Path: p, Err: err}
		}
		if IsWhiteoutDevice(st) {
			return "", nil
		}
		return p, nil
	}
	return "", nil
}

func (s *Stack) Lookup(rel string) (*Meta, error) {
	var st unix.Stat_t
	p, err := s.locate(rel, &st)
	if p == "" || err != nil {
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
	srcs, err := s.sources(rel)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{} // true: present, false: whited out above
	for _, dir := range srcs {
		local, err := listNames(dir)
		if err != nil {
			return nil, err
		}
		for name, present := range local {
			if _, ok := seen[name]; !ok {
				seen[name] = present
			}
		}
	}
	var out []string
	for name, present := range seen {
		if present {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// listNames reads one layer directory: name → true for an object, false
// for a whiteout. Only character devices need an lstat to tell.
func listNames(dir string) (map[string]bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	ents, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("readdir %s: %w", dir, err)
	}
	out := make(map[string]bool, len(ents))
	for _, e := range ents {
		name := e.Name()
		if IsReservedName(name) {
			if name != OpaqueMarker {
				if _, ok := out[name[len(WhiteoutPrefix):]]; !ok {
					out[name[len(WhiteoutPrefix):]] = false
				}
			}
			continue
		}
		present := true
		if e.Type()&os.ModeCharDevice != 0 {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(dir, name), &st); err != nil {
				return nil, err
			}
			present = !IsWhiteoutDevice(&st)
		}
		out[name] = present
	}
	return out, nil
}

func (s *Stack) SameContent(rel, p string) (bool, error) {
	var st unix.Stat_t
	lp, err := s.locate(rel, &st)
	if lp == "" || err != nil {
		return false, err
	}
	return sameFileContent(lp, p)
}

// isOpaqueDir reports whether a layer directory hides the layers below.
// One listxattr answers for all the marker names.
func isOpaqueDir(dir string) (bool, error) {
	raw, err := readXattrs(dir)
	if err != nil {
		return false, err
	}
	if mk, _ := splitXattrs(raw); mk.opaque {
		return true, nil
	}
	return exists(filepath.Join(dir, OpaqueMarker))
}

func exists(p string) (bool, error) {
	var st unix.Stat_t
	err := unix.Lstat(p, &st)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, &os.PathError{Op: "lstat", Path: p, Err: err}
	}
	return true, nil
}

// sameFileContent compares two files byte for byte.
func sameFileContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
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
