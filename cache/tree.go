package cache

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/ctxio"
)

// treeFormat opens the hashed stream; a change to the encoding below
// must change it, so that old and new digests never compare equal.
const treeFormat = "layerfs tree v1\n"

type treeNode struct {
	path      string // relative, "/"-separated; "." for the root
	mode      uint32 // st_mode: type and 07777
	uid, gid  uint32
	size      int64 // regular files
	mtime     int64 // ns
	rdev      uint64
	link      string
	xattrs    []string // name, value, name, value, ... sorted by name
	sum       [sha256.Size]byte
	isRegular bool
	isDevice  bool
	isSymlink bool
	isDir     bool
}

// TreeDigest hashes the tree at dir: in a walk sorted bytewise by name,
// each object's relative path, type, permission bits with setuid, setgid
// and sticky, uid, gid, mtime in nanoseconds, all its xattrs sorted by
// name (overlay markers such as trusted.overlay.opaque included: they
// are part of a layer dir's meaning), and by type the size and sha256 of
// a regular file's content, a symlink's target, a device's major and
// minor. Hardlinked files are hashed as content each time, so a tree of
// links and one of copies agree. Symlinks are never followed, dir itself
// included. Not hashed: atime, ctime, inode numbers, link counts, and
// directory sizes (which differ between filesystems).
//
// A process without CAP_SYS_ADMIN does not see trusted.* xattrs and so
// gets another digest for a tree that has them.
func TreeDigest(ctx context.Context, dir string) (digest.Digest, error) {
	d, _, err := treeDigest(ctx, dir)
	return d, err
}

// treeDigest is TreeDigest that also reports whether the tree has
// trusted.* xattrs.
func treeDigest(ctx context.Context, dir string) (d digest.Digest, trusted bool, err error) {
	var nodes []treeNode
	if err := walkTree(ctx, dir, ".", &nodes); err != nil {
		return "", false, fmt.Errorf("tree digest %s: %w", dir, err)
	}
	if err := hashFiles(ctx, dir, nodes); err != nil {
		return "", false, fmt.Errorf("tree digest %s: %w", dir, err)
	}
	h := sha256.New()
	w := bufio.NewWriterSize(h, 64<<10)
	w.WriteString(treeFormat)
	var scratch []byte
	for i := range nodes {
		scratch = nodes[i].encode(scratch[:0])
		w.Write(scratch)
		for j := 0; j < len(nodes[i].xattrs); j += 2 {
			trusted = trusted || strings.HasPrefix(nodes[i].xattrs[j], "trusted.")
		}
	}
	w.Flush()
	return digest.NewDigest(digest.SHA256, h), trusted, nil
}

// encode appends the node's record: every field length-prefixed or of
// fixed meaning, so that no two different trees give the same stream.
func (n *treeNode) encode(b []byte) []byte {
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	str(n.path)
	b = binary.AppendUvarint(b, uint64(n.mode))
	b = binary.AppendUvarint(b, uint64(n.uid))
	b = binary.AppendUvarint(b, uint64(n.gid))
	b = binary.AppendVarint(b, n.mtime)
	switch {
	case n.isRegular:
		b = binary.AppendUvarint(b, uint64(n.size))
		b = append(b, n.sum[:]...)
	case n.isSymlink:
		str(n.link)
	case n.isDevice:
		b = binary.AppendUvarint(b, uint64(unix.Major(n.rdev)))
		b = binary.AppendUvarint(b, uint64(unix.Minor(n.rdev)))
	}
	b = binary.AppendUvarint(b, uint64(len(n.xattrs)/2))
	for _, s := range n.xattrs {
		str(s)
	}
	return b
}

func walkTree(ctx context.Context, root, rel string, nodes *[]treeNode) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p := filepath.Join(root, rel)
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	n := treeNode{path: rel, mode: st.Mode, uid: st.Uid, gid: st.Gid, mtime: st.Mtim.Nano()}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		n.isRegular, n.size = true, st.Size
	case unix.S_IFLNK:
		n.isSymlink = true
		link, err := os.Readlink(p)
		if err != nil {
			return err
		}
		n.link = link
	case unix.S_IFCHR, unix.S_IFBLK:
		n.isDevice, n.rdev = true, st.Rdev
	case unix.S_IFDIR:
		n.isDir = true
	}
	var err error
	if n.xattrs, err = readXattrs(p); err != nil {
		return err
	}
	*nodes = append(*nodes, n)
	if !n.isDir {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	slices.Sort(names)
	for _, name := range names {
		child := name
		if rel != "." {
			child = rel + "/" + name
		}
		if err := walkTree(ctx, root, child, nodes); err != nil {
			return err
		}
	}
	return nil
}

// readXattrs returns p's xattrs (not following a symlink) as name, value
// pairs sorted by name.
func readXattrs(p string) ([]string, error) {
	list, err := xattrCall(func(b []byte) (int, error) { return unix.Llistxattr(p, b) })
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil // a filesystem without xattrs
	}
	if err != nil {
		return nil, &fs.PathError{Op: "listxattr", Path: p, Err: err}
	}
	var names []string
	for name := range strings.SplitSeq(string(list), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	out := make([]string, 0, 2*len(names))
	for _, name := range names {
		v, err := xattrCall(func(b []byte) (int, error) { return unix.Lgetxattr(p, name, b) })
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "getxattr " + name, Path: p, Err: err}
		}
		out = append(out, name, string(v))
	}
	return out, nil
}

// xattrCall runs a listxattr or getxattr call with a buffer that fits,
// growing it when the value grew between asking its size and reading it.
func xattrCall(call func([]byte) (int, error)) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := call(buf)
		if err == nil {
			return buf[:n], nil
		}
		if !errors.Is(err, unix.ERANGE) {
			return nil, err
		}
		size, err := call(nil)
		if err != nil {
			return nil, err
		}
		buf = make([]byte, size+256)
	}
}

// hashFiles fills in the content sums of the regular files, several at a
// time: a rootfs is mostly file content, and one core cannot read it as
// fast as a disk can deliver it.
func hashFiles(ctx context.Context, root string, nodes []treeNode) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan *treeNode)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), 8) {
		wg.Go(func() {
			buf := make([]byte, 128<<10)
			for n := range jobs {
				if err := hashFile(ctx, filepath.Join(root, n.path), n, buf); err != nil {
					cancel(err)
				}
			}
		})
	}
feed:
	for i := range nodes {
		if !nodes[i].isRegular {
			continue
		}
		select {
		case jobs <- &nodes[i]:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

func hashFile(ctx context.Context, p string, n *treeNode, buf []byte) error {
	if ctx.Err() != nil {
		return nil // the first error is already recorded
	}
	// O_NOATIME spares the disk a write per file read; only the owner
	// (or CAP_FOWNER) may ask for it.
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return &fs.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, ctxio.Reader(ctx, f), buf); err != nil {
		return err
	}
	h.Sum(n.sum[:0])
	return nil
}
