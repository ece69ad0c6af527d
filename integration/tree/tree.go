// Package tree records a filesystem tree in a comparable form and diffs two
// such records. It is the oracle of the differential test: the kernel's
// merged overlayfs view is snapshotted once, and every applier's
// reconstruction of the committed image must snapshot identically.
package tree

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Type is the kind of a filesystem object.
type Type string

// The object kinds a layer can carry (sockets are recorded so that a stray
// one shows up in a diff, although layers never contain them).
const (
	Dir     Type = "dir"
	File    Type = "file"
	Symlink Type = "symlink"
	Char    Type = "char"
	Block   Type = "block"
	Fifo    Type = "fifo"
	Socket  Type = "socket"
)

// Entry is everything about one path that an image layer can carry.
type Entry struct {
	Type Type
	// Mode is the permission bits plus setuid, setgid and sticky (07777).
	Mode uint32
	Uid  uint32
	Gid  uint32
	// Size and Digest are set for regular files only (see digest.go for
	// why Digest does not depend on sparseness).
	Size   int64
	Digest string
	// Link is the symlink target, byte for byte.
	Link string
	// Major and Minor are set for character and block devices.
	Major, Minor uint32
	// Xattrs holds every extended attribute except overlayfs internals.
	Xattrs map[string][]byte
	// Mtime is whole seconds since the epoch: layers store whole seconds.
	Mtime int64
	// Links lists every path of the tree that shares this object's inode,
	// this one included, sorted; nil when the object has one name. Group
	// membership rather than inode numbers, so that two trees compare.
	Links []string
}

// Tree maps a slash-separated path relative to the snapshot root (never
// the root itself) to its entry. Paths are raw bytes: non-UTF-8 names are
// kept as they are on disk.
type Tree map[string]*Entry

// Paths returns the paths of t, sorted bytewise.
func (t Tree) Paths() []string {
	ps := make([]string, 0, len(t))
	for p := range t {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// ignoredXattr reports xattrs that are overlayfs bookkeeping: they never
// belong to an image, and an applier's own overlay mount may add them.
func ignoredXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.")
}

type inodeKey struct {
	dev uint64
	ino uint64
}

// Snapshot records every path below root. It uses lstat only and never
// follows a symlink, so a tree whose /bin is a symlink is recorded as such.
func Snapshot(root string) (Tree, error) {
	t := Tree{}
	inodes := map[inodeKey][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("walk %q: %w", p, err)
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return fmt.Errorf("relative path of %q: %w", p, err)
		}
		rel = filepath.ToSlash(rel)
		e, st, err := entryOf(p)
		if err != nil {
			return err
		}
		t[rel] = e
		if e.Type != Dir {
			k := inodeKey{dev: uint64(st.Dev), ino: st.Ino}
			inodes[k] = append(inodes[k], rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", root, err)
	}
	for _, group := range inodes {
		if len(group) < 2 {
			continue
		}
		sort.Strings(group)
		for _, p := range group {
			t[p].Links = group
		}
	}
	return t, nil
}

func entryOf(p string) (*Entry, *syscall.Stat_t, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return nil, nil, fmt.Errorf("lstat %q: %w", p, err)
	}
	e := &Entry{
		Mode:  st.Mode & 07777,
		Uid:   st.Uid,
		Gid:   st.Gid,
		Mtime: st.Mtim.Sec,
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		e.Type = Dir
	case syscall.S_IFREG:
		e.Type = File
		e.Size = st.Size
		d, err := contentDigest(p, st.Size)
		if err != nil {
			return nil, nil, err
		}
		e.Digest = d
	case syscall.S_IFLNK:
		e.Type = Symlink
		l, err := os.Readlink(p)
		if err != nil {
			return nil, nil, fmt.Errorf("readlink %q: %w", p, err)
		}
		e.Link = l
	case syscall.S_IFCHR, syscall.S_IFBLK:
		e.Type = Char
		if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
			e.Type = Block
		}
		e.Major = unix.Major(st.Rdev)
		e.Minor = unix.Minor(st.Rdev)
	case syscall.S_IFIFO:
		e.Type = Fifo
	case syscall.S_IFSOCK:
		e.Type = Socket
	default:
		return nil, nil, fmt.Errorf("%q: unknown file type %o", p, st.Mode&syscall.S_IFMT)
	}
	x, err := readXattrs(p)
	if err != nil {
		return nil, nil, err
	}
	e.Xattrs = x
	return e, &st, nil
}
