package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Entry is one name of a layer dir with its markers interpreted.
type Entry struct {
	Name string
	// Whiteout: the name deletes what the layers below have there. Meta is
	// then empty.
	Whiteout bool
	// Opaque: a directory that hides the contents of the layers below it
	// (from an xattr; ReadDir also folds in a .wh..wh..opq marker).
	Opaque bool
	Meta   Meta
}

// Stat reads one object of a layer dir: lstat, xattrs, and the ownership
// override if one was recorded.
func Stat(path string) (Entry, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return Entry{Name: filepath.Base(path)}, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	return statWith(atPath(path), &st)
}

// statWith completes an Entry for a from an lstat result the caller
// already has, so that no object is stat'ed twice.
func statWith(a at, st *unix.Stat_t) (Entry, error) {
	_, name := a.parent()
	e := Entry{Name: name}
	if IsWhiteoutDevice(st) {
		e.Whiteout = true
		return e, nil
	}
	e.Meta = metaFromStat(st)
	raw, err := readXattrs(a)
	if err != nil {
		return e, err
	}
	mk, xattrs := splitXattrs(raw)
	if mk.unsupported != "" {
		return e, fmt.Errorf("%s: has %s: %w", a, mk.unsupported, ErrUnsupportedUpper)
	}
	if mk.whiteout && e.Meta.Type == TypeReg {
		return Entry{Name: e.Name, Whiteout: true}, nil
	}
	e.Meta.Xattrs = xattrs
	e.Opaque = mk.opaque && e.Meta.Type == TypeDir
	if mk.override != "" {
		o, err := ParseOverride(mk.override)
		if err != nil {
			return e, fmt.Errorf("%s: %w", a, err)
		}
		o.apply(&e.Meta)
	} else {
		e.Meta.OnDiskOwner = true
	}
	if e.Meta.Type == TypeSymlink {
		if e.Meta.Link, err = a.readlink(); err != nil {
			return e, a.err("readlink", err)
		}
	}
	return e, nil
}

// ErrReservedName reports a real file whose name only a marker may have.
var ErrReservedName = errors.New("name reserved for whiteout markers")

// ReadDir lists a directory of a layer dir, sorted bytewise by name, with
// markers turned into flags: a 0:0 device or a .wh.NAME file becomes a
// whiteout entry NAME, and a .wh..wh..opq file sets opaque. Where a layer
// holds both NAME and .wh.NAME, the real entry wins: the whiteout can only
// have meant the layers below.
func ReadDir(dir string) (entries []Entry, opaque bool, err error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	ents, err := readDirentsFd(fd)
	if err != nil {
		return nil, false, &os.PathError{Op: "readdir", Path: dir, Err: err}
	}
	var whiteouts []string
	entries = make([]Entry, 0, len(ents))
	for _, d := range ents {
		name := d.name
		if IsReservedName(name) {
			switch target := name[len(WhiteoutPrefix):]; {
			case name == OpaqueMarker:
				opaque = true
			case target == "" || target == "." || target == ".." || IsReservedName(target):
				return nil, false, fmt.Errorf("%s: %w", filepath.Join(dir, name), ErrReservedName)
			default:
				whiteouts = append(whiteouts, target)
			}
			continue
		}
		// Relative to the open directory: no walk of the full path.
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return nil, false, &os.PathError{Op: "lstat", Path: filepath.Join(dir, name), Err: err}
		}
		e, err := statWith(at{dir: fd, path: name, root: dir}, &st)
		if err != nil {
			return nil, false, err
		}
		entries = append(entries, e)
	}
	for _, w := range whiteouts {
		i, found := slices.BinarySearchFunc(entries, w, func(e Entry, n string) int { return strings.Compare(e.Name, n) })
		if !found {
			entries = slices.Insert(entries, i, Entry{Name: w, Whiteout: true})
		}
	}
	return entries, opaque, nil
}
