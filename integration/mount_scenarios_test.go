package integration

import (
	"fmt"
	"strings"
	"testing"
)

// mountScenario is one named case of the mount differential: scripts that
// build the lowers as plain dirs (as root, with runScript's prelude: mkf),
// and the ops that fsops runs on the kernel's overlayfs and on the
// implementation. The lowers are layer dirs in DESIGN's format, so they
// may hold 0:0 whiteouts and trusted.overlay.opaque dirs (not .wh.*
// files: the kernel does not read those, layerfs does by design).
type mountScenario struct {
	name   string
	lower1 string // the base lower
	lower2 string // optional, above lower1
	// fixtures is a script run in a dir that sh ops see as $FIX.
	fixtures string
	ops      []fsop
	// upperAbsent: paths that only get read, which no upper may hold.
	upperAbsent []string
	// upperPresent: paths opened for writing, which both uppers must hold.
	upperPresent []string
}

func (s mountScenario) mountCase() mountCase {
	return mountCase{
		name: s.name,
		buildLowers: func(t *testing.T, l1, l2 string) int {
			runScript(t, l1, "lower1", s.lower1)
			if s.lower2 == "" {
				return 1
			}
			runScript(t, l2, "lower2", s.lower2)
			return 2
		},
		fixtures:     s.fixtures,
		ops:          s.ops,
		upperAbsent:  s.upperAbsent,
		upperPresent: s.upperPresent,
		describe: func() string {
			var b strings.Builder
			fmt.Fprintf(&b, "--- lower1 ---\n%s\n", s.lower1)
			if s.lower2 != "" {
				fmt.Fprintf(&b, "--- lower2 ---\n%s\n", s.lower2)
			}
			if s.fixtures != "" {
				fmt.Fprintf(&b, "--- fixtures ---\n%s\n", s.fixtures)
			}
			b.WriteString(describeOps(s.ops))
			return b.String()
		},
	}
}

func describeOps(ops []fsop) string {
	var b strings.Builder
	b.WriteString("--- ops ---\n")
	for i, o := range ops {
		fmt.Fprintf(&b, "%3d %s\n", i, o)
	}
	return b.String()
}

// opb builds fsops operations: op.create("a", "data", "excl"), ...
type opb struct{}

var op opb

func (opb) create(p, data string, flags ...string) fsop {
	return fsop{Op: "create", Path: p, Data: data, Flags: flags}
}
func (opb) createMode(p string, mode uint32, data string, flags ...string) fsop {
	return fsop{Op: "create", Path: p, Mode: mode, Data: data, Flags: flags}
}

// open is O_RDONLY plus flags (wronly, rdwr, creat, excl, trunc, append,
// nofollow, directory; read reads through the fd).
func (opb) open(p string, flags ...string) fsop { return fsop{Op: "open", Path: p, Flags: flags} }
func (opb) write(p string, off int64, data string) fsop {
	return fsop{Op: "write", Path: p, Off: off, Data: data}
}
func (opb) append(p, data string) fsop          { return fsop{Op: "append", Path: p, Data: data} }
func (opb) truncate(p string, size int64) fsop  { return fsop{Op: "truncate", Path: p, Size: size} }
func (opb) ftruncate(p string, size int64) fsop { return fsop{Op: "ftruncate", Path: p, Size: size} }
func (opb) read(p string) fsop                  { return fsop{Op: "read", Path: p} }
func (opb) rwread(p string) fsop                { return fsop{Op: "rwread", Path: p} }
func (opb) roFdAcrossWrite(p string, off int64, data string) fsop {
	return fsop{Op: "rofd_across_write", Path: p, Off: off, Data: data}
}
func (opb) rename(from, to string, flags ...string) fsop {
	return fsop{Op: "rename", Path: from, Path2: to, Flags: flags}
}
func (opb) unlink(p string) fsop                 { return fsop{Op: "unlink", Path: p} }
func (opb) rmdir(p string) fsop                  { return fsop{Op: "rmdir", Path: p} }
func (opb) mkdir(p string, mode uint32) fsop     { return fsop{Op: "mkdir", Path: p, Mode: mode} }
func (opb) link(from, to string) fsop            { return fsop{Op: "link", Path: from, Path2: to} }
func (opb) symlink(target, p string) fsop        { return fsop{Op: "symlink", Path: p, Data: target} }
func (opb) readlink(p string) fsop               { return fsop{Op: "readlink", Path: p} }
func (opb) chmod(p string, mode uint32) fsop     { return fsop{Op: "chmod", Path: p, Mode: mode} }
func (opb) statfs(p string) fsop                 { return fsop{Op: "statfs", Path: p} }
func (opb) stat(p string) fsop                   { return fsop{Op: "stat", Path: p} }
func (opb) lstat(p string) fsop                  { return fsop{Op: "lstat", Path: p} }
func (opb) readdir(p string) fsop                { return fsop{Op: "readdir", Path: p} }
func (opb) sameino(a, b string) fsop             { return fsop{Op: "sameino", Path: a, Path2: b} }
func (opb) inoMark(p, key string) fsop           { return fsop{Op: "ino_mark", Path: p, Name: key} }
func (opb) inoCheck(p, key string) fsop          { return fsop{Op: "ino_check", Path: p, Name: key} }
func (opb) sh(cmd string) fsop                   { return fsop{Op: "sh", Data: cmd} }
func (opb) listxattr(p string) fsop              { return fsop{Op: "listxattr", Path: p} }
func (opb) getxattr(p, name string) fsop         { return fsop{Op: "getxattr", Path: p, Name: name} }
func (opb) removexattr(p, name string) fsop      { return fsop{Op: "removexattr", Path: p, Name: name} }
func (opb) flock(p string, flags ...string) fsop { return fsop{Op: "flock", Path: p, Flags: flags} }
func (opb) fcntlLock(p string) fsop              { return fsop{Op: "fcntl_lock", Path: p} }
func (opb) fsync(p, data string, flags ...string) fsop {
	return fsop{Op: "fsync", Path: p, Data: data, Flags: flags}
}
func (opb) mknod(p, kind string, mode, major, minor uint32) fsop {
	return fsop{Op: "mknod", Path: p, Kind: kind, Mode: mode, Major: major, Minor: minor}
}
func (opb) chown(p string, uid, gid int, flags ...string) fsop {
	return fsop{Op: "chown", Path: p, Uid: uid, Gid: gid, Flags: flags}
}

// utimens sets atime and mtime (ns; utimeNow, utimeOmit).
func (opb) utimens(p string, atime, mtime int64, flags ...string) fsop {
	return fsop{Op: "utimens", Path: p, Atime: atime, Mtime: mtime, Flags: flags}
}
func (opb) setxattr(p, name, value string, flags ...string) fsop {
	return fsop{Op: "setxattr", Path: p, Name: name, Data: value, Flags: flags}
}
func (opb) setxattrHex(p, name, hexValue string, flags ...string) fsop {
	return fsop{Op: "setxattr", Path: p, Name: name, Data: hexValue, Hex: true, Flags: flags}
}

// inspect is everything a reader can learn about p without changing it.
func (opb) inspect(p string) []fsop {
	return []fsop{op.lstat(p), op.listxattr(p)}
}

const (
	utimeNow  = -1
	utimeOmit = -2
	// capNetBindHex is a VFS_CAP_REVISION_2 security.capability value:
	// effective, permitted cap_net_bind_service (what setcap writes).
	capNetBindHex = "0100000200040000000000000000000000000000"
	// explicit times the ops set: before freshAfter, after the lowers'.
	t2017 = 1_500_000_000_123_456_789
	t2018 = 1_530_000_000_000_000_001
)

// seq flattens fsops and lists of them into one op list.
func seq(items ...any) []fsop {
	var out []fsop
	for _, it := range items {
		switch x := it.(type) {
		case fsop:
			out = append(out, x)
		case []fsop:
			out = append(out, x...)
		default:
			panic(fmt.Sprintf("seq: %T", it))
		}
	}
	return out
}

// mountScenarios cover issue 3's "Semantics a package manager needs" and
// research/fuse.md §6.
var mountScenarios = []mountScenario{
	// --- create, write, truncate ---
	{
		name:   "create_new_files",
		lower1: `mkf etc/hosts hosts; chmod 0750 etc; chown 0:50 etc`,
		ops: seq(
			op.create("etc/new", "hello"), op.createMode("top", 0o600, "x"), op.createMode("etc/perm", 0o4777, ""),
			op.create("etc/sub/f", "no parent"), op.mkdir("etc/sub", 0o777), op.create("etc/sub/f", "f"),
			op.read("etc/new"), op.stat("etc"), op.stat("etc/sub"), op.readdir("etc"), op.readdir(""),
		),
	},
	{
		name:   "create_excl",
		lower1: `mkf etc/a A; mkf etc/b B; ln -s missing etc/dangling; mkdir etc/dir`,
		ops: seq(
			op.create("etc/a", "x", "excl"), op.create("etc/new", "1", "excl"), op.create("etc/new", "2", "excl"),
			op.create("etc/dangling", "x", "excl"), op.create("etc/dir", "x", "excl"),
			op.unlink("etc/b"), op.create("etc/b", "again", "excl"), op.read("etc/b"), op.read("etc/new"),
			op.readdir("etc"),
		),
	},
	{
		name: "create_trunc_lower",
		lower1: `mkf etc/conf 'long lower content'; chmod 0640 etc/conf; chown 1000:1000 etc/conf
setfattr -n user.k -v v etc/conf; mkf etc/keep keep`,
		ops: seq(
			op.create("etc/conf", "new", "trunc"), op.read("etc/conf"), op.inspect("etc/conf"),
			op.getxattr("etc/conf", "user.k"), op.open("etc/keep", "wronly", "trunc"), op.read("etc/keep"),
		),
	},
	{
		name:   "o_append_lower",
		lower1: `mkf var/log/dpkg.log 'line1\n'; chmod 0600 var/log/dpkg.log`,
		ops: seq(
			op.create("var/log/dpkg.log", "line2\n", "append"), op.append("var/log/dpkg.log", "line3\n"),
			op.create("var/log/new.log", "a", "append"), op.append("var/log/new.log", "b"),
			op.read("var/log/dpkg.log"), op.read("var/log/new.log"), op.lstat("var/log/dpkg.log"),
		),
	},
	{
		name:   "write_at_offset_lower",
		lower1: `mkf data 0123456789; head -c 200000 /dev/zero | tr '\0' 'z' > big`,
		ops: seq(
			op.write("data", 3, "XY"), op.write("data", 20, "end"), op.read("data"),
			op.write("big", 131072, "middle"), op.read("big"), op.lstat("big"),
		),
	},
	{
		name:   "truncate_lower",
		lower1: `mkf a 0123456789; mkf b 0123456789; mkdir d; head -c 100000 /dev/zero | tr '\0' 'q' > c`,
		ops: seq(
			op.truncate("a", 3), op.read("a"), op.ftruncate("b", 100), op.read("b"), op.truncate("c", 70000),
			op.read("c"), op.truncate("d", 0), op.truncate("missing", 0), op.truncate("a", 0), op.lstat("a"),
		),
	},
	// --- rename ---
	{
		name:   "rename_file_new_name",
		lower1: `mkf a A; mkf d/b B; mkf d/x X`,
		ops: seq(
			op.rename("a", "c"), op.rename("d/b", "d/c"), op.rename("c", "d/e"), op.rename("missing", "z"),
			op.readdir(""), op.readdir("d"), op.lstat("a"), op.read("d/e"), op.read("d/c"),
		),
	},
	{
		name:   "rename_over_upper_file",
		lower1: `mkf a A; mkdir d`,
		ops: seq(
			op.create("n1", "N1"), op.create("n2", "N2"), op.rename("n1", "n2"), op.read("n2"),
			op.create("d/n3", "N3"), op.rename("a", "d/n3"), op.read("d/n3"), op.readdir(""), op.readdir("d"),
		),
	},
	{
		name:   "rename_over_lower_file",
		lower1: `mkf a A; mkf b B; mkf d/c C; chmod 0600 d/c; chown 1000:1000 d/c`,
		ops: seq(
			op.rename("a", "b"), op.read("b"), op.lstat("a"), op.create("n", "N"), op.rename("n", "d/c"),
			op.lstat("d/c"), op.read("d/c"), op.readdir(""), op.readdir("d"),
		),
	},
	{
		name:   "rename_over_whiteout",
		lower1: `mkf a A; mkf b B; mkf d/c C`,
		ops: seq(
			op.unlink("b"), op.rename("a", "b"), op.read("b"), op.lstat("a"), op.create("a", "again"),
			op.unlink("d/c"), op.create("n", "N"), op.rename("n", "d/c"), op.read("d/c"), op.readdir(""),
			op.readdir("d"),
		),
	},
	{
		name:   "rename_noreplace",
		lower1: `mkf a A; mkf b B; mkf d/x X`,
		ops: seq(
			op.rename("a", "b", "noreplace"), op.unlink("b"), op.rename("a", "b", "noreplace"),
			op.rename("b", "c", "noreplace"), op.create("x", "X"), op.rename("x", "c", "noreplace"),
			op.rename("x", "d/x", "noreplace"), op.readdir(""), op.read("c"),
		),
	},
	{
		name:   "rename_exchange_files",
		lower1: `mkf a A; mkf b B; mkf d/c C; chmod 0700 d/c`,
		ops: seq(
			op.create("u", "U"), op.rename("a", "b", "exchange"), op.read("a"), op.read("b"),
			op.rename("u", "d/c", "exchange"), op.read("u"), op.lstat("u"), op.read("d/c"),
			op.rename("a", "missing", "exchange"), op.readdir(""), op.readdir("d"),
		),
	},
	{
		name:   "rename_upper_dir",
		lower1: `mkdir -p base/x; mkf base/x/f; mkdir other`,
		ops: seq(
			op.mkdir("new", 0o750), op.create("new/f", "f"), op.mkdir("new/sub", 0o755), op.create("new/sub/g", "g"),
			op.rename("new", "moved"), op.rename("moved", "base/moved"), op.readdir("base"),
			op.readdir("base/moved"), op.lstat("base/moved"), op.read("base/moved/sub/g"),
			op.mkdir("empty", 0o755), op.rename("empty", "other"), op.readdir("other"), op.readdir(""),
		),
	},
	{
		name: "mv_lower_dir",
		lower1: `mkf usr/share/doc/pkg/a; mkf usr/share/doc/pkg/sub/b; ln -s a usr/share/doc/pkg/l
setfattr -n user.k -v v usr/share/doc/pkg; chmod 0700 usr/share/doc/pkg/sub; chown 1000:1000 usr/share/doc/pkg/a
mkdir -p opt empty1 empty2`,
		ops: seq(
			op.sh("mv usr/share/doc/pkg usr/share/doc/pkg2"), op.readdir("usr/share/doc"),
			op.readdir("usr/share/doc/pkg2"), op.inspect("usr/share/doc/pkg2"), op.inspect("usr/share/doc/pkg2/sub"),
			op.sh("mv usr/share/doc/pkg2 opt/"), op.readdir("opt"), op.read("opt/pkg2/a"),
			op.rename("empty1", "empty2", "fallback"), op.readdir(""), op.readdir("opt/pkg2"),
		),
	},
	{
		name:   "mv_dir_two_lowers",
		lower1: `mkf d/a; mkf d/b; mkdir t`,
		lower2: `mkf d/c; mkf d/a A2; mkf t/x`,
		ops: seq(
			op.sh("mv d t/d"), op.readdir("t"), op.readdir("t/d"), op.read("t/d/a"), op.lstat("d"),
			op.sh("mv t moved"), op.readdir("moved/d"), op.readdir(""),
		),
	},
	// --- unlink, rmdir, whiteouts, opaque ---
	{
		name:   "unlink_lower_leaves_whiteout",
		lower1: `mkf etc/a; mkf etc/b; mkdir etc/d; mknod etc/null c 1 3; ln -s a etc/l`,
		ops: seq(
			op.unlink("etc/a"), op.lstat("etc/a"), op.unlink("etc/a"), op.unlink("etc/d"), op.unlink("etc/null"),
			op.unlink("etc/l"), op.readdir("etc"), op.create("etc/a", "new"), op.unlink("etc/a"), op.readdir("etc"),
		),
	},
	{
		name:   "unlink_upper_only",
		lower1: `mkdir etc`,
		ops: seq(
			op.create("etc/n", "x"), op.unlink("etc/n"), op.mkdir("etc/d", 0o755), op.rmdir("etc/d"),
			op.readdir("etc"), op.lstat("etc/n"),
		),
	},
	{
		name:   "rmdir_lower",
		lower1: `mkdir -p var/empty; mkf var/full/x; mkf var/file`,
		ops: seq(
			op.rmdir("var/empty"), op.rmdir("var/full"), op.rmdir("var/missing"), op.rmdir("var/file"),
			op.readdir("var"), op.lstat("var/empty"), op.mkdir("var/empty", 0o700), op.readdir("var/empty"),
		),
	},
	{
		name:   "rmdir_after_emptying",
		lower1: `mkf var/full/x; mkf var/full/y; mkdir var/full/sub`,
		ops: seq(
			op.unlink("var/full/x"), op.rmdir("var/full"), op.unlink("var/full/y"), op.rmdir("var/full/sub"),
			op.readdir("var/full"), op.rmdir("var/full"), op.lstat("var/full"), op.mkdir("var/full", 0o755),
			op.readdir("var/full"), op.create("var/full/x", "new"), op.readdir("var/full"),
		),
	},
	{
		name:   "rm_rf_then_mkdir_opaque",
		lower1: `mkf etc/app/a; mkf etc/app/b; mkf etc/app/sub/c; chmod 0750 etc/app`,
		ops: seq(
			op.sh("rm -rf etc/app"), op.mkdir("etc/app", 0o700), op.readdir("etc/app"), op.lstat("etc/app/a"),
			op.create("etc/app/a", "new"), op.mkdir("etc/app/sub", 0o755), op.readdir("etc/app/sub"),
			op.readdir("etc/app"), op.lstat("etc/app"),
		),
	},
	{
		name:   "rmdir_nonempty_only_in_lower",
		lower1: `mkf d/x; mkf e/y`,
		lower2: `mkdir d; mkdir e; mknod e/y c 0 0`,
		ops: seq(
			op.rmdir("d"), op.readdir("d"), op.unlink("d/x"), op.rmdir("d"), op.lstat("d"),
			op.readdir("e"), op.rmdir("e"), op.lstat("e"), op.readdir(""),
		),
	},
	{
		name:   "whiteouts_and_opaque_in_lowers",
		lower1: `mkf d/a; mkf d/b; mkf o/x; mkf o/y; mkf gone; mkf o2/k`,
		lower2: `mkdir d o o2; mknod d/b c 0 0; setfattr -n trusted.overlay.opaque -v y o; mkf o/z; mknod gone c 0 0
setfattr -n trusted.overlay.opaque -v y o2`,
		ops: seq(
			op.readdir(""), op.readdir("d"), op.readdir("o"), op.readdir("o2"), op.lstat("d/b"), op.lstat("gone"),
			op.lstat("o/x"), op.listxattr("o"), op.getxattr("o", "trusted.overlay.opaque"),
			op.create("d/b", "B"), op.create("gone", "G"), op.readdir("d"), op.rmdir("o"), op.unlink("o/z"),
			op.rmdir("o"), op.rmdir("o2"), op.readdir(""),
		),
	},
	{
		name:   "readdir_two_lowers_merged",
		lower1: `mkf d/a; mkf d/b; mkf d/c; mkf d/sub/x; ln -s a d/l; mkfifo d/p`,
		lower2: `mkf d/b B2; mkf d/e; mkf d/sub/y; mkf d/c/notdir`,
		ops: seq(
			op.readdir("d"), op.readdir("d/sub"), op.readdir("d/c"), op.read("d/b"), op.lstat("d/c"),
			op.create("d/f", "F"), op.unlink("d/a"), op.readdir("d"), op.stat("d"), op.stat("d/sub"),
		),
	},
	{
		name:   "whiteout_recreate_cycles",
		lower1: `mkf a A; mkdir d; mkf d/x`,
		ops: seq(
			op.unlink("a"), op.create("a", "1"), op.unlink("a"), op.mkdir("a", 0o755), op.readdir("a"),
			op.rmdir("a"), op.symlink("target", "a"), op.readlink("a"), op.unlink("a"),
			op.mknod("a", "fifo", 0o600, 0, 0), op.lstat("a"), op.unlink("a"), op.lstat("a"),
			op.sh("rm -rf d"), op.create("d", "now a file"), op.unlink("d"), op.mkdir("d", 0o755),
			op.readdir("d"), op.readdir(""),
		),
	},
	{
		name:   "replace_types",
		lower1: `mkf x/y; mkf f F; ln -s f s`,
		ops: seq(
			op.sh("rm -rf x"), op.create("x", "file now"), op.lstat("x"), op.unlink("f"), op.mkdir("f", 0o755),
			op.create("f/g", "g"), op.readdir("f"), op.unlink("s"), op.mkdir("s", 0o700), op.readdir(""),
		),
	},
	{
		name:   "type_errors",
		lower1: `mkf f F; mkdir -p d/sub; mkf d/sub/x; mkdir e`,
		ops: seq(
			op.rename("f", "e"), op.rename("e", "f"), op.rename("d", "d/sub/in"), op.unlink("d"), op.rmdir("f"),
			op.mkdir("d", 0o755), op.mkdir("f", 0o755), op.create("f/x", "x"), op.link("d", "d2"),
			op.rename("d", "e", "fallback"), op.readdir(""),
		),
	},
	{
		name:   "create_in_deleted_dir",
		lower1: `mkf d/x; mkf d/sub/y`,
		ops: seq(
			op.sh("rm -rf d"), op.create("d/x", "x"), op.mkdir("d/sub", 0o755), op.lstat("d"), op.readdir(""),
		),
	},
	// --- links ---
	{
		name:   "link_lower_file",
		lower1: `mkf bin/tool T; chmod 0755 bin/tool; chown 0:50 bin/tool; setfattr -n user.k -v v bin/tool`,
		ops: seq(
			op.link("bin/tool", "bin/tool2"), op.lstat("bin/tool"), op.lstat("bin/tool2"),
			op.sameino("bin/tool", "bin/tool2"), op.read("bin/tool2"), op.listxattr("bin/tool2"),
			op.link("bin/tool", "top"), op.lstat("top"), op.readdir("bin"),
		),
	},
	{
		name:   "link_then_write_and_unlink",
		lower1: `mkf a A; mkdir d`,
		ops: seq(
			op.link("a", "d/b"), op.write("d/b", 0, "X"), op.read("a"), op.sameino("a", "d/b"), op.unlink("a"),
			op.lstat("d/b"), op.create("n", "N"), op.link("n", "n2"), op.link("n", "n3"), op.lstat("n"),
			op.unlink("n2"), op.lstat("n3"), op.rename("n", "n3"), op.lstat("n3"), op.lstat("n"),
		),
	},
	{
		name:   "link_errors",
		lower1: `mkf a; mkf b; mkdir d`,
		ops: seq(
			op.link("d", "d2"), op.link("a", "b"), op.link("missing", "c"), op.link("a", "nodir/c"),
			op.unlink("b"), op.link("a", "b"), op.sameino("a", "b"), op.readdir(""),
		),
	},
	{
		name:   "lower_hardlinks",
		lower1: `mkf h/x X; ln h/x h/y; ln h/x z; mkf h/p P; ln h/p h/q`,
		ops: seq(
			op.sameino("h/x", "h/y"), op.lstat("h/x"), op.write("h/x", 0, "W"), op.read("h/y"), op.read("z"),
			op.sameino("h/x", "h/y"), op.lstat("h/y"), op.chmod("h/p", 0o600), op.lstat("h/q"),
			op.rename("h/p", "h/q"), op.readdir("h"),
		),
	},
	{
		// What a copy-up changes must show at once: the file's own link
		// count (a lower hardlink is broken by the copy-up, index=off),
		// the parent's (it becomes a merged dir), and the VFS must still
		// see the parent as e/a's ancestor (rename onto it: ENOTEMPTY).
		name:   "copy_up_refreshes_attrs",
		lower1: `mkf e/a A; ln e/a e/b; mkdir e/sub`,
		ops: seq(
			op.lstat("e"), op.lstat("e/a"), op.rename("e/a", "e"), op.open("e/a", "wronly"), op.lstat("e/a"),
			op.lstat("e/b"), op.sameino("e/a", "e/b"), op.lstat("e"), op.rename("e/a", "e"), op.readdir("e"),
		),
	},
	{
		// Found by the random test: one name of a lower hardlink group
		// linked, renamed onto itself, moved away, and moved back over a
		// dir that was copied and deleted meanwhile.
		name:   "lower_hardlink_link_rename_back",
		lower1: `mkdir -p d/s e; mkf d/s/a data; ln d/s/a e/b`,
		ops: seq(
			op.link("d/s/a", "f"), op.rename("f", "f"), op.rename("f", "x"), op.sh("cp -a -T d/s f && rm -rf d/s"),
			op.rename("x", "d/s"), op.lstat("d/s"), op.lstat("e/b"), op.readdir("f"), op.sameino("d/s", "e/b"),
		),
	},
	{
		// Found by the random test: link() copies up one name of a lower
		// hardlink group; a change through that name must show through
		// the new link (one inode), and not through the lower partner.
		name:   "lower_hardlink_link_then_setattr",
		lower1: `mkdir -p d/s e; mkf d/b B; ln d/b d/s/b`,
		ops: seq(
			op.link("d/s/b", "e/a"), op.lstat("e/a"), op.utimens("d/s/b", t2017, utimeNow), op.lstat("e/a"),
			op.chmod("d/s/b", 0o600), op.lstat("e/a"), op.lstat("d/b"), op.sameino("e/a", "d/s/b"),
			op.sameino("d/b", "d/s/b"),
		),
	},
	// --- symlinks, devices ---
	{
		name:   "symlink_readlink",
		lower1: `mkf target T; ln -s target lsym; ln -s /abs/path abs; mkdir d`,
		ops: seq(
			op.readlink("lsym"), op.readlink("abs"), op.symlink("target", "s1"), op.symlink("/etc/passwd", "d/s2"),
			op.symlink("dangling", "s3"), op.readlink("s1"), op.readlink("d/s2"), op.lstat("s1"), op.stat("s1"),
			op.stat("s3"), op.symlink("x", "lsym"), op.readlink("target"), op.read("lsym"), op.readdir(""),
		),
	},
	{
		name:   "symlink_lower_metadata_nofollow",
		lower1: `mkf target T; ln -s target lsym`,
		ops: seq(
			op.chown("lsym", 1000, 1000, "nofollow"), op.lstat("lsym"), op.lstat("target"),
			op.utimens("lsym", t2017, t2018, "nofollow"), op.lstat("lsym"), op.readlink("lsym"),
			op.chown("lsym", 50, 50), op.lstat("target"), op.lstat("lsym"),
		),
	},
	{
		name:   "mknod_devices",
		lower1: `mkdir dev; mknod dev/zero c 1 5; mknod dev/loop0 b 7 0; mkfifo dev/fifo`,
		ops: seq(
			op.mknod("dev/null", "char", 0o666, 1, 3), op.mknod("dev/loop1", "block", 0o660, 7, 1),
			op.mknod("dev/pipe", "fifo", 0o600, 0, 0), op.mknod("dev/zero", "char", 0o666, 1, 5),
			op.unlink("dev/zero"), op.mknod("dev/zero", "fifo", 0o644, 0, 0), op.chmod("dev/loop0", 0o600),
			op.lstat("dev/loop0"), op.readdir("dev"),
		),
	},
	{
		name:   "device_nodes_usable",
		lower1: `mkdir dev; mknod dev/null c 1 3; mknod dev/zero c 1 5`,
		ops: seq(
			op.statfs(""), op.write("dev/null", 0, "discarded"), op.read("dev/null"),
			op.mknod("dev/null2", "char", 0o666, 1, 3), op.write("dev/null2", 0, "x"), op.lstat("dev/null2"),
		),
		upperAbsent: []string{"dev/null", "dev/zero"},
	},
	// --- metadata copy-up ---
	{
		name: "chmod_lower_preserves_metadata",
		lower1: `mkf f F; chmod 0644 f; chown 1000:1000 f; setfattr -n user.k -v v f; setfattr -n trusted.t -v tv f
setcap cap_net_bind_service+ep f; mkf g G`,
		ops: seq(
			op.chmod("f", 0o4755), op.inspect("f"), op.getxattr("f", "user.k"), op.getxattr("f", "trusted.t"),
			op.getxattr("f", "security.capability"), op.read("f"), op.chmod("g", 0o1600), op.lstat("g"),
		),
	},
	{
		name: "chown_clears_setuid_and_caps",
		lower1: `mkf bin/su S; chmod 4755 bin/su; mkf bin/ping P; setcap cap_net_raw+ep bin/ping
mkf bin/sg G; chmod 2755 bin/sg; mkdir -p shared; chmod 2775 shared`,
		ops: seq(
			op.chown("bin/su", 1000, 1000), op.lstat("bin/su"), op.chown("bin/ping", 0, 0), op.inspect("bin/ping"),
			op.chown("bin/sg", 0, 1000), op.lstat("bin/sg"), op.chown("shared", 0, 50), op.lstat("shared"),
		),
	},
	{
		name:   "utimens_lower",
		lower1: `mkf f F; mkf g G; mkdir d`,
		ops: seq(
			op.utimens("f", t2017, t2018), op.lstat("f"), op.utimens("g", utimeOmit, utimeNow), op.lstat("g"),
			op.utimens("d", t2018, t2017), op.lstat("d"), op.utimens("missing", t2017, t2017),
		),
	},
	{
		name:        "chmod_lower_dir_children_stay",
		lower1:      `mkf d/a; mkf d/sub/b; chmod 0755 d`,
		ops:         seq(op.chmod("d", 0o700), op.lstat("d"), op.readdir("d"), op.lstat("d/a"), op.readdir("d/sub")),
		upperAbsent: []string{"d/a", "d/sub", "d/sub/b"},
	},
	{
		name: "setgid_dir_inheritance",
		lower1: `mkdir shared; chown 0:50 shared; chmod 2775 shared; mkdir sticky; chmod 1777 sticky
mkdir shared/old; chown 0:50 shared/old; chmod 2775 shared/old`,
		ops: seq(
			op.mkdir("shared/sub", 0o755), op.create("shared/f", "f"), op.lstat("shared/sub"), op.lstat("shared/f"),
			op.create("shared/old/g", "g"), op.lstat("shared/old/g"), op.create("sticky/t", "t"), op.lstat("sticky"),
		),
	},
	{
		name: "deep_copy_up",
		lower1: `mkdir -p a/b/c/d/e; mkf a/b/c/d/e/file F; chmod 0750 a; chown 1000:1000 a/b; chmod 0711 a/b/c
setfattr -n user.dir -v x a/b/c/d; chmod 1777 a/b/c/d/e; mkf a/b/sibling`,
		ops: seq(
			op.write("a/b/c/d/e/file", 1, "X"), op.lstat("a"), op.lstat("a/b"), op.lstat("a/b/c"), op.lstat("a/b/c/d"),
			op.lstat("a/b/c/d/e"), op.listxattr("a/b/c/d"), op.read("a/b/c/d/e/file"), op.readdir("a/b"),
		),
		upperPresent: []string{"a/b/c/d/e/file"},
		upperAbsent:  []string{"a/b/sibling"},
	},
	// --- xattrs ---
	{
		name:   "xattr_user",
		lower1: `mkf f F; setfattr -n user.k -v v f; setfattr -n user.k2 -v v2 f; mkf g G`,
		ops: seq(
			op.getxattr("f", "user.k"), op.listxattr("f"), op.setxattr("f", "user.new", "n"),
			op.setxattr("f", "user.k", "replaced", "replace"), op.setxattr("f", "user.k2", "x", "create"),
			op.setxattr("f", "user.none", "x", "replace"), op.removexattr("f", "user.k"),
			op.removexattr("f", "user.missing"), op.listxattr("f"), op.getxattr("f", "user.k"),
			op.setxattr("g", "user.empty", ""), op.getxattr("g", "user.empty"), op.listxattr("g"),
		),
	},
	{
		name:        "removexattr_missing_no_copy_up",
		lower1:      `mkf f F; mkf g G; setfattr -n user.k -v v g`,
		ops:         seq(op.removexattr("f", "user.missing"), op.removexattr("g", "user.missing"), op.listxattr("g")),
		upperAbsent: []string{"f", "g"},
	},
	{
		name:   "xattr_trusted",
		lower1: `mkf f F; setfattr -n trusted.t -v tv f; mkdir d; mkf o/x`,
		ops: seq(
			op.getxattr("f", "trusted.t"), op.setxattr("d", "trusted.x", "dx"), op.create("n", "N"),
			op.setxattr("n", "trusted.y", "ny"), op.listxattr("f"), op.listxattr("d"), op.listxattr("n"),
			op.removexattr("f", "trusted.t"), op.listxattr("f"), op.readdir("o"),
		),
	},
	{
		name:   "xattr_security_capability",
		lower1: `mkf bin/ping P; setcap cap_net_raw+ep bin/ping; mkf bin/plain X; mkf bin/w W; setcap cap_net_raw+ep bin/w`,
		ops: seq(
			op.getxattr("bin/ping", "security.capability"), op.setxattrHex("bin/plain", "security.capability", capNetBindHex),
			op.getxattr("bin/plain", "security.capability"), op.listxattr("bin/plain"),
			op.removexattr("bin/ping", "security.capability"), op.listxattr("bin/ping"),
			op.write("bin/w", 0, "Z"), op.listxattr("bin/w"), op.create("new", "N"),
			op.setxattrHex("new", "security.capability", capNetBindHex), op.listxattr("new"),
		),
	},
	{
		name:   "xattr_symlink_and_dir",
		lower1: `mkf f; ln -s f l; mkdir d; setfattr -n user.d -v dv d`,
		ops: seq(
			op.setxattr("l", "user.x", "x"), op.setxattr("l", "trusted.x", "x"), op.listxattr("l"),
			op.getxattr("d", "user.d"), op.setxattr("d", "user.e", "e"), op.listxattr("d"), op.readdir("d"),
		),
	},
	// --- statfs, fsync, locks ---
	{
		name:   "statfs_fsync",
		lower1: `mkf etc/conf C; mkdir var`,
		ops: seq(
			op.statfs(""), op.statfs("etc/conf"), op.fsync("var/new", "data", "creat"), op.fsync("etc/conf", "X"),
			op.fsync("var", "", "dir"), op.fsync("etc", "", "dir"), op.read("var/new"), op.read("etc/conf"),
		),
	},
	{
		name:        "flock_readonly_lower",
		lower1:      `mkf var/lib/dpkg/lock; mkf var/lib/dpkg/status S`,
		ops:         seq(op.flock("var/lib/dpkg/lock"), op.create("var/lib/dpkg/lock-frontend", ""), op.flock("var/lib/dpkg/lock-frontend", "rdwr")),
		upperAbsent: []string{"var/lib/dpkg/lock", "var/lib/dpkg/status"},
	},
	{
		name:   "fcntl_locks",
		lower1: `mkf var/lib/rpm/.rpm.lock; mkdir var/run`,
		ops: seq(
			op.fcntlLock("var/lib/rpm/.rpm.lock"), op.create("var/run/new.lock", ""), op.fcntlLock("var/run/new.lock"),
		),
	},
	// --- copy-up on write, never on read ---
	{
		name:   "read_never_copies_up",
		lower1: `mkf etc/a A; setfattr -n user.k -v v etc/a; mkdir -p etc/d; ln -s a etc/l; mkf etc/b B; ln etc/b etc/b2`,
		ops: seq(
			op.read("etc/a"), op.stat("etc/a"), op.lstat("etc/l"), op.stat("etc/l"), op.readlink("etc/l"),
			op.getxattr("etc/a", "user.k"), op.listxattr("etc/a"), op.readdir("etc"), op.readdir("etc/d"),
			op.open("etc/a", "read"), op.open("etc/d", "directory"), op.statfs("etc/a"), op.sameino("etc/b", "etc/b2"),
			op.read("etc/b2"), op.flock("etc/b"), op.inoMark("etc/a", "a"), op.inoCheck("etc/a", "a"),
		),
		upperAbsent: []string{"etc", "etc/a", "etc/d", "etc/l", "etc/b", "etc/b2"},
	},
	{
		name:         "open_for_write_copies_up",
		lower1:       `mkf etc/conf C; chown 1000:1000 etc/conf; mkf etc/other O`,
		ops:          seq(op.open("etc/conf", "wronly"), op.open("etc/other", "rdwr"), op.lstat("etc/conf"), op.read("etc/other")),
		upperPresent: []string{"etc", "etc/conf", "etc/other"},
	},
	{
		name:         "rwread_lower",
		lower1:       `mkf etc/conf 'lower content'; head -c 150000 /dev/zero | tr '\0' 'b' > big`,
		ops:          seq(op.rwread("etc/conf"), op.rwread("big"), op.read("etc/conf")),
		upperPresent: []string{"etc/conf", "big"},
	},
	{
		name:   "read_fd_across_copy_up",
		lower1: `mkf f 'lower data'; mkf g 'lower data'`,
		ops:    seq(op.roFdAcrossWrite("f", 0, "UPPER"), op.read("f"), op.roFdAcrossWrite("g", 5, "!")),
	},
	{
		name:   "ino_stable_across_copy_up",
		lower1: `mkf f F; mkdir d; mkf d/x`,
		ops: seq(
			op.inoMark("f", "f"), op.chmod("f", 0o600), op.inoCheck("f", "f"), op.inoMark("d", "d"),
			op.create("d/new", "N"), op.inoCheck("d", "d"), op.inoMark("d/x", "x"), op.rename("d/x", "moved"),
			op.inoCheck("moved", "x"), op.create("u", "U"), op.inoMark("u", "u"), op.rename("u", "d/u"),
			op.inoCheck("d/u", "u"),
		),
	},
	// --- package manager sequences ---
	{
		name:   "dpkg_new_file",
		lower1: `mkf usr/bin/foo old; chmod 0755 usr/bin/foo; mkf var/lib/dpkg/info/foo.list '/usr/bin/foo\n'`,
		ops: seq(
			op.createMode("usr/bin/foo.dpkg-new", 0o600, "new binary", "excl"), op.fsync("usr/bin/foo.dpkg-new", ""),
			op.chown("usr/bin/foo.dpkg-new", 0, 0), op.chmod("usr/bin/foo.dpkg-new", 0o755),
			op.utimens("usr/bin/foo.dpkg-new", t2017, t2017), op.link("usr/bin/foo", "usr/bin/foo.dpkg-tmp"),
			op.rename("usr/bin/foo.dpkg-new", "usr/bin/foo"), op.unlink("usr/bin/foo.dpkg-tmp"),
			op.read("usr/bin/foo"), op.lstat("usr/bin/foo"), op.append("var/lib/dpkg/info/foo.list", "/usr/bin/bar\n"),
			op.readdir("usr/bin"),
		),
	},
	{
		name:   "dpkg_new_dir_over_merged_dir",
		lower1: `mkdir -p usr/include/readline; mkf usr/include/full/x; mkf usr/include/other.h`,
		ops: seq(
			op.mkdir("usr/include/readline.dpkg-new", 0o755), op.create("usr/include/readline.dpkg-new/r.h", "r"),
			op.rename("usr/include/readline.dpkg-new", "usr/include/readline"), op.readdir("usr/include/readline"),
			op.lstat("usr/include/readline"), op.mkdir("usr/include/full.dpkg-new", 0o755),
			op.rename("usr/include/full.dpkg-new", "usr/include/full"), op.readdir("usr/include"),
		),
	},
	{
		name:     "tar_extract_over_lower",
		lower1:   `mkf etc/keep K; mkf etc/over old; mkdir -p usr/bin; mkf usr/bin/old; chmod 0700 usr`,
		fixtures: `mkdir -p src/etc src/usr/bin src/opt; printf new > src/etc/over; printf t > src/usr/bin/tool; chmod 4755 src/usr/bin/tool; ln src/usr/bin/tool src/usr/bin/tool2; ln -s tool src/usr/bin/t; touch -d @1200000000 src/etc/over src/usr/bin/tool src/opt; tar -C src --numeric-owner --owner=0 --group=0 -cf "$PWD/t.tar" etc usr opt`,
		ops: seq(
			op.sh(`tar -xpf "$FIX/t.tar"`), op.readdir("etc"), op.readdir("usr/bin"), op.lstat("usr"),
			op.sameino("usr/bin/tool", "usr/bin/tool2"), op.read("etc/over"), op.lstat("etc/over"),
			op.sh("cp -a usr usr2 && rm -rf usr/bin && ls usr2/bin"), op.readdir(""),
		),
	},
	{
		name:   "sparse_and_large_lower_files",
		lower1: `truncate -s 1048576 sparse; printf x | dd of=sparse bs=1 seek=500000 conv=notrunc status=none; head -c 300000 /dev/urandom > rnd`,
		ops: seq(
			op.chmod("sparse", 0o600), op.read("sparse"), op.lstat("sparse"), op.write("rnd", 100000, "mid"),
			op.read("rnd"), op.lstat("rnd"),
		),
	},
	{
		name:   "hardlinks_in_upper_nlink",
		lower1: `mkdir d`,
		ops: seq(
			op.create("x", "X"), op.link("x", "y"), op.link("x", "d/z"), op.lstat("x"), op.unlink("y"),
			op.lstat("d/z"), op.rename("x", "d/z"), op.lstat("d/z"), op.sameino("x", "d/z"), op.lstat("x"),
		),
	},
	{
		name:   "mode_and_umask",
		lower1: `mkdir d`,
		ops: seq(
			op.createMode("d/f", 0o666, ""), op.mkdir("d/sub", 0o777), op.createMode("d/x", 0o7777, ""),
			op.mknod("d/p", "fifo", 0o666, 0, 0), op.lstat("d/f"), op.lstat("d/sub"), op.lstat("d/x"), op.lstat("d/p"),
		),
	},
}
