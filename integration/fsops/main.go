// Command fsops runs a list of filesystem operations below a root dir and
// prints one JSON result per operation, so that two union filesystems (the
// kernel's overlayfs and the one under test) can be compared operation by
// operation. It is test tooling for integration/mount_differential_test.go,
// and it always runs as a process of its own: the FUSE server under test
// may live in another Go process, and a client that is also a server can
// deadlock on fork/exec.
//
//	fsops -root DIR [-fix DIR] < ops.json     # a JSON array of Op
//
// Every result has the errno name of the failing step ("" on success) and
// only facts that are meaningful across implementations: file type, mode,
// owner, size (not of directories: that is the backing fs's block use),
// nlink, device numbers, content digests, link targets, xattrs, and mtimes
// of objects older than -fresh (newer ones print as "new", since the two
// runs happen at different times). Inode and device numbers are never
// printed; only whether two names share an inode, or an inode number
// stayed the same (sameino, ino_check).
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/fsops/opspec"
	"github.com/layerfs/layerfs/integration/tree"
)

// Op is one operation (shared with the tests that write them).
type Op = opspec.Op

// Result is what one op did. Err and Out are compared between
// implementations; Diag is for humans only (stderr of a shell command).
type Result struct {
	I    int            `json:"i"`
	Op   string         `json:"op"`
	Err  string         `json:"err,omitempty"`
	Out  map[string]any `json:"out,omitempty"`
	Diag string         `json:"diag,omitempty"`
	// Tree is the snapshot op's record of the whole tree.
	Tree tree.Tree `json:"tree,omitempty"`
}

type runner struct {
	root   string
	rootfd int
	fix    string
	fresh  int64
	marks  map[string][2]uint64
}

func main() {
	root := flag.String("root", "", "the dir all paths are relative to")
	fix := flag.String("fix", "", "fixtures dir, $FIX in sh ops")
	fresh := flag.Int64("fresh", 1_700_000_000, "mtimes at or after this (unix seconds) print as \"new\"")
	flag.Parse()
	if *root == "" {
		fmt.Fprintln(os.Stderr, "fsops: -root is required")
		os.Exit(2)
	}
	var ops []Op
	if err := json.NewDecoder(os.Stdin).Decode(&ops); err != nil {
		fmt.Fprintln(os.Stderr, "fsops: decode ops from stdin:", err)
		os.Exit(2)
	}
	unix.Umask(0o022)
	fd, err := unix.Open(*root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fsops: open root %s: %v\n", *root, err)
		os.Exit(1)
	}
	r := &runner{root: *root, rootfd: fd, fix: *fix, fresh: *fresh, marks: map[string][2]uint64{}}
	w := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(w)
	for i, op := range ops {
		res := r.run(op)
		res.I, res.Op = i, op.Op
		if err := enc.Encode(res); err != nil {
			fmt.Fprintln(os.Stderr, "fsops: encode:", err)
			os.Exit(1)
		}
		// One line per op as it completes: a hang shows where it hung.
		if err := w.Flush(); err != nil {
			os.Exit(1)
		}
	}
}

// errName renders an error as its errno name.
func errName(err error) string {
	if err == nil {
		return ""
	}
	var e unix.Errno
	if errors.As(err, &e) {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
		return "errno " + strconv.Itoa(int(e))
	}
	return err.Error()
}

// step records the outcome of a sub-step of a multi-step op.
func step(err error) string {
	if err == nil {
		return "ok"
	}
	return errName(err)
}

func (r *runner) abs(p string) string { return filepath.Join(r.root, p) }

// short is a path to p for the calls that have no *at form (truncate, the
// xattr calls, statfs): the root's path and p, or, where that is too long
// for one call (an object PATH_MAX-1 bytes deep in the root), p's name in
// its parent's descriptor in /proc/self/fd. done closes that descriptor.
func (r *runner) short(p string) (path string, done func(), err error) {
	abs := r.abs(p)
	if len(abs) < unix.PathMax {
		return abs, func() {}, nil
	}
	dir, name := filepath.Split(p)
	fd, err := unix.Openat(r.rootfd, r.rel(strings.TrimSuffix(dir, "/")), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, err
	}
	return "/proc/self/fd/" + strconv.Itoa(fd) + "/" + name, func() { unix.Close(fd) }, nil
}

// withShort runs f with short(p).
func (r *runner) withShort(p string, f func(string) error) error {
	path, done, err := r.short(p)
	if err != nil {
		return err
	}
	defer done()
	return f(path)
}

func (r *runner) rel(p string) string {
	if p == "" {
		return "."
	}
	return p
}

func (r *runner) open(p string, flags int, mode uint32) (int, error) {
	return unix.Openat(r.rootfd, r.rel(p), flags|unix.O_CLOEXEC, mode)
}

// mutating ops get a "post" lstat of their path(s), so that a divergence
// shows at the op that caused it rather than at the end.
var mutating = map[string]bool{
	"create": true, "open": true, "write": true, "append": true, "truncate": true, "ftruncate": true,
	"rename": true, "unlink": true, "rmdir": true, "mkdir": true, "link": true, "symlink": true,
	"mknod": true, "chmod": true, "chown": true, "utimens": true, "setxattr": true,
	"removexattr": true, "fsync": true, "rwread": true, "rofd_across_write": true,
}

func (r *runner) run(op Op) Result {
	out := map[string]any{}
	res := Result{Out: out}
	err := r.do(op, out, &res)
	res.Err = errName(err)
	if err != nil && res.Diag == "" {
		res.Diag = err.Error()
	}
	if mutating[op.Op] {
		out["post"] = r.lstatOut(op.Path)
		if op.Path2 != "" {
			out["post2"] = r.lstatOut(op.Path2)
		}
	}
	if len(out) == 0 {
		res.Out = nil
	}
	return res
}

func (r *runner) data(op Op) ([]byte, error) {
	if op.Hex {
		return hex.DecodeString(op.Data)
	}
	return []byte(op.Data), nil
}

func writeAll(fd int, b []byte, off int64, pwrite bool) error {
	for len(b) > 0 {
		var n int
		var err error
		if pwrite {
			n, err = unix.Pwrite(fd, b, off)
		} else {
			n, err = unix.Write(fd, b)
		}
		if err != nil {
			return err
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

func readAll(fd int, from int64) ([]byte, error) {
	var buf bytes.Buffer
	b := make([]byte, 64<<10)
	off := from
	for {
		n, err := unix.Pread(fd, b, off)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return buf.Bytes(), nil
		}
		buf.Write(b[:n])
		off += int64(n)
	}
}

// content describes file bytes: size, a digest, and the text itself when
// short and printable.
func content(b []byte) map[string]any {
	sum := sha256.Sum256(b)
	m := map[string]any{"size": len(b), "sha256": hex.EncodeToString(sum[:8])}
	if len(b) <= 64 && utf8.Valid(b) && !bytes.ContainsAny(b, "\x00") {
		m["text"] = string(b)
	}
	return m
}

func openFlags(op Op, base int) int {
	f := base
	for _, fl := range op.Flags {
		switch fl {
		case "excl":
			f |= unix.O_EXCL
		case "trunc":
			f |= unix.O_TRUNC
		case "append":
			f |= unix.O_APPEND
		case "creat":
			f |= unix.O_CREAT
		case "nofollow":
			f |= unix.O_NOFOLLOW
		case "directory":
			f |= unix.O_DIRECTORY
		}
	}
	switch {
	case op.Has("rdwr"):
		f = f&^(unix.O_WRONLY|unix.O_RDONLY) | unix.O_RDWR
	case op.Has("rdonly"):
		f = f &^ (unix.O_WRONLY | unix.O_RDWR)
	case op.Has("wronly"):
		f = f&^(unix.O_RDWR|unix.O_RDONLY) | unix.O_WRONLY
	}
	return f
}

func (r *runner) do(op Op, out map[string]any, res *Result) error {
	switch op.Op {
	case "create", "open":
		// create: O_CREAT|O_WRONLY plus flags; open: O_RDONLY plus flags.
		base := unix.O_RDONLY
		if op.Op == "create" {
			base = unix.O_CREAT | unix.O_WRONLY
		}
		mode := op.Mode
		if mode == 0 {
			mode = 0o644
		}
		fd, err := r.open(op.Path, openFlags(op, base), mode)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if op.Data != "" {
			b, err := r.data(op)
			if err != nil {
				return err
			}
			if err := writeAll(fd, b, 0, false); err != nil {
				return err
			}
		}
		if op.Has("read") {
			b, err := readAll(fd, 0)
			if err != nil {
				return err
			}
			out["content"] = content(b)
		}
		return unix.Close(fd)
	case "write", "append":
		flags := unix.O_WRONLY
		if op.Op == "append" {
			flags |= unix.O_APPEND
		}
		fd, err := r.open(op.Path, flags, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		b, err := r.data(op)
		if err != nil {
			return err
		}
		if err := writeAll(fd, b, op.Off, op.Op == "write"); err != nil {
			return err
		}
		return unix.Close(fd)
	case "truncate":
		return r.withShort(op.Path, func(p string) error { return unix.Truncate(p, op.Size) })
	case "ftruncate":
		fd, err := r.open(op.Path, unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Ftruncate(fd, op.Size)
	case "read":
		fd, err := r.open(op.Path, openFlags(op, unix.O_RDONLY), 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		b, err := readAll(fd, 0)
		if err != nil {
			return err
		}
		out["content"] = content(b)
		return nil
	case "rwread":
		// Open for writing, then read through the same fd (the copy-up
		// must carry the data).
		fd, err := r.open(op.Path, unix.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		b, err := readAll(fd, 0)
		if err != nil {
			return err
		}
		out["content"] = content(b)
		return nil
	case "rofd_across_write":
		// A read-only fd opened before a copy-up, read after another fd
		// wrote: does it see the new data?
		ro, err := r.open(op.Path, unix.O_RDONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(ro)
		b := make([]byte, 1)
		if _, err := unix.Pread(ro, b, 0); err != nil {
			return err
		}
		wfd, err := r.open(op.Path, unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		werr := writeAll(wfd, []byte(op.Data), op.Off, true)
		cerr := unix.Close(wfd)
		if werr != nil {
			return werr
		}
		if cerr != nil {
			return cerr
		}
		got, err := readAll(ro, 0)
		if err != nil {
			return err
		}
		out["ro_fd_content"] = content(got)
		return nil
	case "rename":
		return r.rename(op, out)
	case "unlink":
		return unix.Unlinkat(r.rootfd, op.Path, 0)
	case "rmdir":
		return unix.Unlinkat(r.rootfd, op.Path, unix.AT_REMOVEDIR)
	case "mkdir":
		mode := op.Mode
		if mode == 0 {
			mode = 0o755
		}
		return unix.Mkdirat(r.rootfd, op.Path, mode)
	case "link":
		return unix.Linkat(r.rootfd, op.Path, r.rootfd, op.Path2, 0)
	case "symlink":
		return unix.Symlinkat(op.Data, r.rootfd, op.Path)
	case "readlink":
		b := make([]byte, 4096)
		n, err := unix.Readlinkat(r.rootfd, op.Path, b)
		if err != nil {
			return err
		}
		out["target"] = string(b[:n])
		return nil
	case "mknod":
		var typ uint32
		switch op.Kind {
		case "char":
			typ = unix.S_IFCHR
		case "block":
			typ = unix.S_IFBLK
		case "fifo":
			typ = unix.S_IFIFO
		default:
			return fmt.Errorf("mknod: unknown kind %q", op.Kind)
		}
		mode := op.Mode
		if mode == 0 {
			mode = 0o644
		}
		return unix.Mknodat(r.rootfd, op.Path, typ|mode, int(unix.Mkdev(op.Major, op.Minor)))
	case "chmod":
		return unix.Fchmodat(r.rootfd, r.rel(op.Path), op.Mode, 0)
	case "chown":
		flags := 0
		if op.Has("nofollow") {
			flags = unix.AT_SYMLINK_NOFOLLOW
		}
		return unix.Fchownat(r.rootfd, r.rel(op.Path), op.Uid, op.Gid, flags)
	case "utimens":
		ts := [2]unix.Timespec{timespec(op.Atime), timespec(op.Mtime)}
		flags := 0
		if op.Has("nofollow") {
			flags = unix.AT_SYMLINK_NOFOLLOW
		}
		return unix.UtimesNanoAt(r.rootfd, r.rel(op.Path), ts[:], flags)
	case "setxattr":
		v, err := r.data(op)
		if err != nil {
			return err
		}
		flags := 0
		if op.Has("create") {
			flags = unix.XATTR_CREATE
		}
		if op.Has("replace") {
			flags = unix.XATTR_REPLACE
		}
		return r.withShort(op.Path, func(p string) error {
			if op.Has("follow") {
				return unix.Setxattr(p, op.Name, v, flags)
			}
			return unix.Lsetxattr(p, op.Name, v, flags)
		})
	case "getxattr":
		return r.withShort(op.Path, func(p string) error {
			v, err := getxattr(p, op.Name)
			if err != nil {
				return err
			}
			out["value"] = xattrValue(v)
			return nil
		})
	case "listxattr":
		return r.withShort(op.Path, func(p string) error {
			names, err := listxattr(p)
			if err != nil {
				return err
			}
			out["names"] = names
			return nil
		})
	case "removexattr":
		return r.withShort(op.Path, func(p string) error { return unix.Lremovexattr(p, op.Name) })
	case "fallocate":
		fd, err := r.open(op.Path, unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Fallocate(fd, 0, op.Off, op.Size)
	case "copy_range":
		// copy_file_range from Path2 into Path (both in the root).
		in, err := r.open(op.Path2, unix.O_RDONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(in)
		fd, err := r.open(op.Path, unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		off := op.Off
		_, err = unix.CopyFileRange(in, nil, fd, &off, int(op.Size), 0)
		return err
	case "fstat_unlinked":
		// open, unlink the name, fstat the descriptor: what a file whose
		// names are gone looks like.
		fd, err := r.open(op.Path, openFlags(op, unix.O_RDONLY), 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Unlinkat(r.rootfd, op.Path, 0); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		out["stat"] = r.statOut(&st)
		return nil
	case "statfs":
		// Sizes and counts are the backing fs's; the mount flags are the
		// union's own (a rootfs for package installs needs suid and dev).
		var st unix.Statfs_t
		if err := r.withShort(op.Path, func(p string) error { return unix.Statfs(p, &st) }); err != nil {
			return err
		}
		flags := []string{}
		for _, f := range []struct {
			bit  int64
			name string
		}{{unix.ST_RDONLY, "rdonly"}, {unix.ST_NOSUID, "nosuid"}, {unix.ST_NODEV, "nodev"}, {unix.ST_NOEXEC, "noexec"}} {
			if st.Flags&f.bit != 0 {
				flags = append(flags, f.name)
			}
		}
		out["flags"] = flags
		return nil
	case "fsync":
		return r.fsync(op)
	case "flock":
		return r.flock(op, out)
	case "fcntl_lock":
		return r.fcntlLock(op, out)
	case "stat", "lstat":
		var st unix.Stat_t
		flags := 0
		if op.Op == "lstat" {
			flags = unix.AT_SYMLINK_NOFOLLOW
		}
		if err := unix.Fstatat(r.rootfd, r.rel(op.Path), &st, flags); err != nil {
			return err
		}
		out["stat"] = r.statOut(&st)
		return nil
	case "readdir":
		return r.readdir(op, out)
	case "sameino":
		var a, b unix.Stat_t
		if err := unix.Fstatat(r.rootfd, r.rel(op.Path), &a, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if err := unix.Fstatat(r.rootfd, r.rel(op.Path2), &b, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		out["same"] = a.Ino == b.Ino && a.Dev == b.Dev
		out["nlink"] = []uint64{uint64(a.Nlink), uint64(b.Nlink)}
		return nil
	case "ino_mark", "ino_check":
		var st unix.Stat_t
		if err := unix.Fstatat(r.rootfd, r.rel(op.Path), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		id := [2]uint64{uint64(st.Dev), st.Ino}
		if op.Op == "ino_mark" {
			r.marks[op.Name] = id
			return nil
		}
		was, ok := r.marks[op.Name]
		if !ok {
			return fmt.Errorf("ino_check: no ino_mark %q", op.Name)
		}
		out["same"] = was == id
		return nil
	case "sh":
		return r.sh(op.Data, out, res)
	case "snapshot":
		t, err := tree.Snapshot(r.abs(op.Path))
		if err != nil {
			return err
		}
		res.Tree = t
		return nil
	}
	return fmt.Errorf("unknown op %q", op.Op)
}

func timespec(ns int64) unix.Timespec {
	switch ns {
	case -1:
		return unix.Timespec{Nsec: unix.UTIME_NOW}
	case -2:
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	}
	return unix.NsecToTimespec(ns)
}

// rename is renameat2 with the flags noreplace, exchange. With the flag
// fallback, a directory rename answered with EXDEV is done the way mv
// does it (copy, then delete), with rename(2)'s rules for the target,
// and the result says "fallback": the kernel with redirect_dir=off
// refuses to move a dir that lives in a lower, and an implementation may
// instead succeed; both then end in the same tree.
func (r *runner) rename(op Op, out map[string]any) error {
	var flags uint
	if op.Has("noreplace") {
		flags |= unix.RENAME_NOREPLACE
	}
	if op.Has("exchange") {
		flags |= unix.RENAME_EXCHANGE
	}
	var st unix.Stat_t
	srcDir := unix.Fstatat(r.rootfd, op.Path, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
	var dst unix.Stat_t
	dstDir := unix.Fstatat(r.rootfd, op.Path2, &dst, unix.AT_SYMLINK_NOFOLLOW) == nil && dst.Mode&unix.S_IFMT == unix.S_IFDIR
	err := unix.Renameat2(r.rootfd, op.Path, r.rootfd, op.Path2, flags)
	if !errors.Is(err, unix.EXDEV) || !op.Has("fallback") || !(srcDir || (flags&unix.RENAME_EXCHANGE != 0 && dstDir)) {
		return err
	}
	out["fallback"] = true
	if flags&unix.RENAME_EXCHANGE == 0 {
		return r.moveByCopy(op.Path, op.Path2)
	}
	// Exchange as three moves through a temporary name beside Path.
	tmp := filepath.Join(filepath.Dir(op.Path), ".fsops-exchange")
	if err := r.moveOne(op.Path, tmp); err != nil {
		return err
	}
	if err := r.moveOne(op.Path2, op.Path); err != nil {
		return err
	}
	return r.moveOne(tmp, op.Path2)
}

// moveOne renames, falling back to moveByCopy on EXDEV.
func (r *runner) moveOne(from, to string) error {
	err := unix.Renameat(r.rootfd, from, r.rootfd, to)
	if errors.Is(err, unix.EXDEV) {
		return r.moveByCopy(from, to)
	}
	return err
}

// moveByCopy moves the dir from to to by copying: rename(2)'s rules for
// an existing target (an empty dir is replaced, a non-empty one is
// ENOTEMPTY, a non-dir is ENOTDIR), then cp -a and rm -rf.
func (r *runner) moveByCopy(from, to string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(r.rootfd, to, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return unix.ENOTDIR
		}
		if err := unix.Unlinkat(r.rootfd, to, unix.AT_REMOVEDIR); err != nil {
			return err
		}
	}
	cmd := exec.Command("cp", "-a", "-T", "--", from, to)
	cmd.Dir = r.root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", from, to, err, b)
	}
	cmd = exec.Command("rm", "-rf", "--", from)
	cmd.Dir = r.root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("rm -rf %s: %v: %s", from, err, b)
	}
	return nil
}

func (r *runner) fsync(op Op) error {
	if op.Has("dir") {
		fd, err := r.open(op.Path, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Fsync(fd)
	}
	fd, err := r.open(op.Path, openFlags(op, unix.O_WRONLY), 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if op.Data != "" {
		if err := writeAll(fd, []byte(op.Data), 0, false); err != nil {
			return err
		}
	}
	if err := unix.Fdatasync(fd); err != nil {
		return err
	}
	if err := unix.Fsync(fd); err != nil {
		return err
	}
	return unix.Close(fd)
}

// flock: two open file descriptions of Path; an exclusive lock on the
// first must make the second's non-blocking attempt fail until released.
// Opened read-only unless the flag rdwr is given.
func (r *runner) flock(op Op, out map[string]any) error {
	mode := unix.O_RDONLY
	if op.Has("rdwr") {
		mode = unix.O_RDWR
	}
	a, err := r.open(op.Path, mode, 0)
	if err != nil {
		return err
	}
	defer unix.Close(a)
	b, err := r.open(op.Path, mode, 0)
	if err != nil {
		return err
	}
	defer unix.Close(b)
	out["steps"] = []string{
		"a ex: " + step(unix.Flock(a, unix.LOCK_EX|unix.LOCK_NB)),
		"b ex: " + step(unix.Flock(b, unix.LOCK_EX|unix.LOCK_NB)),
		"b sh: " + step(unix.Flock(b, unix.LOCK_SH|unix.LOCK_NB)),
		"a un: " + step(unix.Flock(a, unix.LOCK_UN)),
		"b ex: " + step(unix.Flock(b, unix.LOCK_EX|unix.LOCK_NB)),
	}
	return nil
}

// fcntlLock: a process-associated F_SETLK write lock on one open file
// description, then an open-file-description lock (F_OFD_SETLK) on a
// second one, which conflicts with it although both are this process's.
func (r *runner) fcntlLock(op Op, out map[string]any) error {
	a, err := r.open(op.Path, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(a)
	b, err := r.open(op.Path, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer unix.Close(b)
	lk := func(typ int16) *unix.Flock_t {
		return &unix.Flock_t{Type: typ, Whence: io.SeekStart, Start: 0, Len: 0}
	}
	steps := []string{
		"a setlk wr: " + step(unix.FcntlFlock(uintptr(a), unix.F_SETLK, lk(unix.F_WRLCK))),
		"b ofd wr: " + step(unix.FcntlFlock(uintptr(b), unix.F_OFD_SETLK, lk(unix.F_WRLCK))),
	}
	probe := lk(unix.F_WRLCK)
	gerr := unix.FcntlFlock(uintptr(b), unix.F_OFD_GETLK, probe)
	got := map[int16]string{unix.F_WRLCK: "wrlck", unix.F_RDLCK: "rdlck", unix.F_UNLCK: "unlck"}[probe.Type]
	steps = append(steps, "b ofd getlk: "+step(gerr)+" "+got,
		"a unlock: "+step(unix.FcntlFlock(uintptr(a), unix.F_SETLK, lk(unix.F_UNLCK))),
		"b ofd wr: "+step(unix.FcntlFlock(uintptr(b), unix.F_OFD_SETLK, lk(unix.F_WRLCK))),
		"a setlk rd: "+step(unix.FcntlFlock(uintptr(a), unix.F_SETLK, lk(unix.F_RDLCK))))
	out["steps"] = steps
	return nil
}

func (r *runner) sh(command string, out map[string]any, res *Result) error {
	cmd := exec.Command("sh", "-c", command)
	cmd.Dir = r.root
	cmd.Env = append(os.Environ(), "FIX="+r.fix, "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		return err
	}
	out["exit"] = code
	if stdout.Len() > 0 {
		out["stdout"] = stdout.String()
	}
	res.Diag = stderr.String()
	return nil
}

// readdir lists a directory with getdents64 and reports the sorted
// entries with their d_type, any duplicate or marker (.wh.*) name,
// entries whose d_ino or d_type disagree with lstat, and whether a
// rewind (lseek 0) lists the same again.
func (r *runner) readdir(op Op, out map[string]any) error {
	fd, err := r.open(op.Path, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	first, err := getdents(fd)
	if err != nil {
		return err
	}
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		return err
	}
	again, err := getdents(fd)
	if err != nil {
		return err
	}
	seen := map[string]int{}
	var names, dups, markers, inoBad, typeBad []string
	for _, d := range first {
		if d.name == "." || d.name == ".." {
			continue
		}
		seen[d.name]++
		if seen[d.name] == 2 {
			dups = append(dups, d.name)
		}
		if seen[d.name] > 1 {
			continue
		}
		if strings.HasPrefix(d.name, ".wh.") {
			markers = append(markers, d.name)
		}
		names = append(names, d.name+":"+dtypeName(d.typ))
		var st unix.Stat_t
		if err := unix.Fstatat(fd, d.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			inoBad = append(inoBad, d.name+": lstat "+errName(err))
			continue
		}
		if st.Ino != d.ino {
			inoBad = append(inoBad, d.name)
		}
		if d.typ != unix.DT_UNKNOWN && d.typ != modeDtype(st.Mode) {
			typeBad = append(typeBad, d.name)
		}
	}
	sort.Strings(names)
	sort.Strings(dups)
	sort.Strings(markers)
	sort.Strings(inoBad)
	sort.Strings(typeBad)
	out["entries"] = names
	if dups != nil {
		out["duplicates"] = dups
	}
	if markers != nil {
		out["markers"] = markers
	}
	if inoBad != nil {
		out["d_ino_not_st_ino"] = inoBad
	}
	if typeBad != nil {
		out["d_type_wrong"] = typeBad
	}
	out["rewind_same"] = sameNames(first, again)
	return nil
}

type dirent struct {
	ino  uint64
	typ  uint8
	name string
}

func getdents(fd int) ([]dirent, error) {
	var out []dirent
	buf := make([]byte, 8192)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		b := buf[:n]
		for len(b) > 0 {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			out = append(out, dirent{ino: binary.NativeEndian.Uint64(b[0:8]), typ: b[18], name: string(name)})
			b = b[reclen:]
		}
	}
}

func sameNames(a, b []dirent) bool {
	na := make([]string, 0, len(a))
	for _, d := range a {
		na = append(na, d.name)
	}
	nb := make([]string, 0, len(b))
	for _, d := range b {
		nb = append(nb, d.name)
	}
	sort.Strings(na)
	sort.Strings(nb)
	return strings.Join(na, "\x00") == strings.Join(nb, "\x00")
}

func dtypeName(t uint8) string {
	switch t {
	case unix.DT_REG:
		return "file"
	case unix.DT_DIR:
		return "dir"
	case unix.DT_LNK:
		return "symlink"
	case unix.DT_CHR:
		return "char"
	case unix.DT_BLK:
		return "block"
	case unix.DT_FIFO:
		return "fifo"
	case unix.DT_SOCK:
		return "socket"
	}
	return "unknown"
}

func modeDtype(m uint32) uint8 {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return unix.DT_REG
	case unix.S_IFDIR:
		return unix.DT_DIR
	case unix.S_IFLNK:
		return unix.DT_LNK
	case unix.S_IFCHR:
		return unix.DT_CHR
	case unix.S_IFBLK:
		return unix.DT_BLK
	case unix.S_IFIFO:
		return unix.DT_FIFO
	case unix.S_IFSOCK:
		return unix.DT_SOCK
	}
	return unix.DT_UNKNOWN
}

func typeName(m uint32) string { return dtypeName(modeDtype(m)) }

func (r *runner) lstatOut(p string) any {
	var st unix.Stat_t
	if err := unix.Fstatat(r.rootfd, r.rel(p), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return errName(err)
	}
	return r.statOut(&st)
}

// statOut is the part of a stat that two implementations must agree on.
func (r *runner) statOut(st *unix.Stat_t) map[string]any {
	m := map[string]any{
		"type":  typeName(st.Mode),
		"mode":  fmt.Sprintf("%04o", st.Mode&0o7777),
		"owner": fmt.Sprintf("%d:%d", st.Uid, st.Gid),
		"nlink": uint64(st.Nlink),
		"mtime": r.mtime(st.Mtim),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		// A directory's size is its backing fs's block use: not a fact
		// about the union.
	case unix.S_IFCHR, unix.S_IFBLK:
		m["rdev"] = fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	default:
		m["size"] = st.Size
	}
	return m
}

func (r *runner) mtime(ts unix.Timespec) string {
	if ts.Sec >= r.fresh {
		return "new"
	}
	return fmt.Sprintf("%d.%09d", ts.Sec, ts.Nsec)
}

func xattrValue(v []byte) string {
	if utf8.Valid(v) && !bytes.ContainsAny(v, "\x00") {
		return strconv.Quote(string(v))
	}
	return "hex:" + hex.EncodeToString(v)
}

func getxattr(p, name string) ([]byte, error) {
	for {
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		n, err = unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

func listxattr(p string) ([]string, error) {
	for {
		n, err := unix.Llistxattr(p, nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, n)
		n, err = unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		names := []string{}
		for _, b := range bytes.Split(buf[:n], []byte{0}) {
			if len(b) > 0 {
				names = append(names, string(b))
			}
		}
		sort.Strings(names)
		return names, nil
	}
}
