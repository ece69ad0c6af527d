package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/testenv"
)

// POSIX edge cases of the mount (issue 13), each run on the kernel's
// overlayfs and on every union under test over copies of the same lowers,
// with the differential's rule: per operation, the same result and errno.
// The ops run in fsops, by descriptors from the mount's root (no chdir):
// a path PATH_MAX-1 bytes long inside the mount fits one call; the mount's
// own path in front of it would not.

// posixPhase is ops run by one user: root, or cred's.
type posixPhase struct {
	cred *syscall.Credential
	ops  []fsop
}

var nobody = &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}

// posixCompare runs the phases on the kernel's overlayfs and on each
// union under test, over a lower that lower fills (nil: an empty one),
// and reports every op whose result differs.
func posixCompare(t *testing.T, lower func(t *testing.T, dir string), phases []posixPhase) {
	t.Helper()
	impls := unionsUnderTest(t)
	for _, u := range impls {
		needMountTools(t, u)
	}
	posixCompareOn(t, impls, nil, lower, phases)
}

// posixCompareOn is posixCompare on the unions impls, with the layer dirs
// owned by owner when set (a rootless mount's user).
func posixCompareOn(t *testing.T, impls []union, owner *syscall.Credential, lower func(t *testing.T, dir string), phases []posixPhase) {
	t.Helper()
	// nobody runs ops too: the binary and the mounts are where anyone
	// may walk (t.TempDir's parents are root's alone).
	open := func() string {
		d, err := os.MkdirTemp("", "layerfs-posix-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	bin := filepath.Join(open(), "fsops")
	copyTree(t, buildFsops(t), bin)
	var all []fsop
	for _, p := range phases {
		all = append(all, p.ops...)
	}
	run := func(t *testing.T, u union) []fsResult {
		base := open()
		d := mkdirs(t, base, "lower", "upper", "work", "mnt")
		if lower != nil {
			lower(t, d[0])
		}
		// The merged root is the upper's root: every user may write there.
		if err := os.Chmod(d[1], 0o777); err != nil {
			t.Fatal(err)
		}
		if owner != nil {
			for _, p := range d {
				if err := os.Chown(p, int(owner.Uid), int(owner.Gid)); err != nil {
					t.Fatal(err)
				}
			}
		}
		unmount := u.mount(t, []string{d[0]}, d[1], d[2], d[3])
		defer unmount()
		var res []fsResult
		for _, p := range phases {
			res = append(res, runOps(t, bin, d[3], base, p.cred, p.ops)...)
		}
		return res
	}
	want := run(t, kernelUnion)
	for _, u := range impls {
		t.Run(u.name, func(t *testing.T) {
			got := run(t, u)
			problems, tolerated := compareResults(all, want, got)
			for _, p := range tolerated {
				t.Log(p)
			}
			for _, p := range problems {
				t.Errorf("%s vs %s: %s", kernelUnion.name, u.name, p)
			}
		})
	}
}

// deepDirs is a chain of 15 directories of 255-byte names: 3,839 bytes.
var deepDirs = func() string {
	c := strings.Repeat("d", 255)
	return strings.TrimSuffix(strings.Repeat(c+"/", 15), "/")
}()

// deepMkdirs make deepDirs, one level an op.
func deepMkdirs() []fsop {
	var ops []fsop
	for i := range strings.Count(deepDirs, "/") + 1 {
		ops = append(ops, op.mkdir(deepDirs[:256*(i+1)-1], 0o755))
	}
	return ops
}

// deepName is the path below deepDirs whose whole length is total bytes.
func deepName(total int, last string) string {
	return deepDirs + "/" + strings.Repeat(last, total-len(deepDirs)-1)
}

// deepOps are the operations at a path of total bytes: they all succeed
// at PATH_MAX-1 and fail with ENAMETOOLONG at PATH_MAX.
func deepOps(total int, who string) []fsop {
	p := deepName(total, "n")
	l, r := deepName(total, "l"), deepName(total, "r")
	ops := []fsop{
		op.create(p, "data"),
		op.chmod(p, 0o640),
		op.truncate(p, 2),
		op.setxattr(p, "user.t", "v"),
		op.getxattr(p, "user.t"),
		op.lstat(p),
		op.link(p, l),
		op.rename(p, r),
		op.unlink(r),
		op.unlink(l),
		op.mkdir(p, 0o755),
		op.rmdir(p),
		op.symlink("target", p),
		op.readlink(p),
		op.unlink(p),
	}
	if who == "root" {
		ops = append(ops[:3], append([]fsop{op.chown(p, 1, 2)}, ops[3:]...)...)
	}
	return ops
}

// deepLowerOps change the lower file deepDirs/f, PATH_MAX-1 bytes deep:
// each copies up every parent first.
func deepLowerOps(who string) []fsop {
	f := deepName(unix.PathMax-1, "f")
	g := deepName(unix.PathMax-1, "g")
	ops := []fsop{
		op.lstat(f),
		op.chmod(f, 0o600),
		op.truncate(f, 1),
		op.setxattr(f, "user.t", "v"),
		op.link(f, g),
		op.unlink(g),
		op.rename(f, g),
		op.unlink(g),
		op.lstat(deepDirs),
		op.rmdir(deepDirs), // not empty in the lower: its name stays
	}
	if who == "root" {
		ops = append([]fsop{op.chown(f, 3, 4)}, ops...)
	}
	return ops
}

// makeDeepLower makes deepDirs and its file f, PATH_MAX-1 bytes deep, in
// dir, by descriptors, owned by owner.
func makeDeepLower(t *testing.T, dir string, owner *syscall.Credential) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	p := ""
	for _, c := range strings.Split(deepDirs, "/") {
		if p == "" {
			p = c
		} else {
			p += "/" + c
		}
		if err := unix.Mkdirat(fd, p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f := deepName(unix.PathMax-1, "f")
	ffd, err := unix.Openat(fd, f, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(ffd, []byte("lower data"))
	unix.Close(ffd)
	if owner != nil {
		for q := f; q != "."; q = filepath.Dir(q) {
			if err := unix.Fchownat(fd, q, int(owner.Uid), int(owner.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
		}
		if err := unix.Fchownat(fd, ".", int(owner.Uid), int(owner.Gid), 0); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPosixPathMax: names whose whole path inside the mount is
// PATH_MAX-1 bytes work for every operation, in a tree made through the
// mount and in one that lives in a lower (which every change copies up,
// parents first); PATH_MAX gets ENAMETOOLONG; NAME_MAX works and
// NAME_MAX+1 gets ENAMETOOLONG. As root, and as nobody.
func TestPosixPathMax(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	names := []fsop{
		op.create(strings.Repeat("a", 255), "x"),
		op.create(strings.Repeat("a", 256), "x"),
		op.mkdir(strings.Repeat("b", 255), 0o755),
		op.mkdir(strings.Repeat("b", 256), 0o755),
		op.symlink("t", strings.Repeat("c", 255)),
		op.symlink("t", strings.Repeat("c", 256)),
	}
	for _, who := range []string{"root", "nobody"} {
		var cred *syscall.Credential
		if who == "nobody" {
			cred = nobody
		}
		t.Run(who, func(t *testing.T) {
			t.Run("upper", func(t *testing.T) {
				ops := append(deepMkdirs(), deepOps(unix.PathMax-1, who)...)
				ops = append(ops, deepOps(unix.PathMax, who)...)
				posixCompare(t, nil, []posixPhase{{cred, append(ops, names...)}})
			})
			t.Run("lower", func(t *testing.T) {
				posixCompare(t, func(t *testing.T, dir string) { makeDeepLower(t, dir, cred) },
					[]posixPhase{{cred, deepLowerOps(who)}})
			})
		})
	}
	// A normal user's own mount (FUSE through fusermount3, the daemon
	// running as that user), against the kernel's overlayfs over the same
	// user's dirs. No chown: a normal user may not.
	t.Run("rootless", func(t *testing.T) {
		if os.Getenv("LAYERFS_UNION") != "" && layerfsDrivers(t) == nil {
			t.Skip("LAYERFS_UNION names a reference, not layerfs")
		}
		u := newFakeRootUser(t)
		cred := &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{}}
		impls := []union{rootlessUnion(u, cred)}
		ops := append(deepMkdirs(), deepOps(unix.PathMax-1, "user")...)
		ops = append(ops, deepOps(unix.PathMax, "user")...)
		t.Run("upper", func(t *testing.T) {
			posixCompareOn(t, impls, cred, nil, []posixPhase{{cred, append(ops, names...)}})
		})
		t.Run("lower", func(t *testing.T) {
			posixCompareOn(t, impls, cred, func(t *testing.T, dir string) { makeDeepLower(t, dir, cred) },
				[]posixPhase{{cred, deepLowerOps("user")}})
		})
	})
}

// rootlessUnion is `layerfs mount --driver fuse` run by the user cred,
// as the rootless tests run it.
func rootlessUnion(u *fakeRootUser, cred *syscall.Credential) union {
	asUser := func(args ...string) *exec.Cmd {
		cmd := exec.Command(u.bin, args...)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + u.work}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		return cmd
	}
	return union{
		name:  "layerfs-rootless",
		tools: []string{"fusermount3"},
		mount: func(t *testing.T, lowers []string, upper, work, mnt string) func() error {
			args := []string{"mount", "--driver", "fuse"}
			for _, l := range lowers {
				args = append(args, "--lower", l)
			}
			args = append(args, "--upper", upper, "--workdir", work, mnt)
			return fuseMount(t, mnt, asUser(args...), func() *exec.Cmd { return asUser("umount", mnt) })
		},
	}
}

// TestPosixSymlinkTargetMax: a symlink to a target of PATH_MAX-1 bytes is
// made and read back whole; PATH_MAX is ENAMETOOLONG.
func TestPosixSymlinkTargetMax(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	long := strings.Repeat("t", unix.PathMax-1)
	posixCompare(t, nil, []posixPhase{{nil, []fsop{
		op.symlink(long, "max"),
		op.readlink("max"),
		op.lstat("max"),
		op.symlink(long+"t", "over"),
	}}})
}

// TestPosixOpenUnlinked: a file opened, then unlinked, is fstat'ed
// through its descriptor: a file of the upper has no link left; a lower
// file the union deleted keeps its layer's.
func TestPosixOpenUnlinked(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	posixCompare(t, func(t *testing.T, dir string) {
		runScript(t, dir, "lower", `echo lower > lf; echo l2 > lrw`)
	}, []posixPhase{{nil, []fsop{
		op.create("uf", "upper"),
		{Op: "fstat_unlinked", Path: "uf"},
		{Op: "fstat_unlinked", Path: "lf"},
		{Op: "fstat_unlinked", Path: "lrw", Flags: []string{"rdwr"}},
	}}})
}

// suidCases are what an unprivileged caller does to a setuid or setgid
// file that it may write.
var suidCases = []struct {
	name string
	ops  func(p string) []fsop
}{
	{"write", func(p string) []fsop { return []fsop{op.write(p, 0, "x")} }},
	{"truncate", func(p string) []fsop { return []fsop{op.truncate(p, 1)} }},
	{"ftruncate", func(p string) []fsop { return []fsop{op.ftruncate(p, 1)} }},
	{"otrunc", func(p string) []fsop { return []fsop{op.open(p, "wronly", "trunc")} }},
	{"fallocate", func(p string) []fsop { return []fsop{{Op: "fallocate", Path: p, Size: 8192}} }},
	{"copy_range", func(p string) []fsop { return []fsop{{Op: "copy_range", Path: p, Path2: "source", Size: 3}} }},
	{"openonly", func(p string) []fsop { return []fsop{op.open(p, "wronly")} }},
}

var suidModes = []struct {
	name string
	mode uint32
}{{"suid", 0o4777}, {"sgid", 0o2777}, {"sgid-noexec", 0o2767}}

// TestPosixSetuidKill: as root, files with mode 04777, 02777 and 02767
// (made through the mount, and living in a lower); as nobody, a write, a
// truncate, an ftruncate, an open with O_TRUNC, an fallocate and a
// copy_file_range into each: the bits go as on the kernel's overlayfs
// (setuid; setgid with group execute, or for a caller outside the group).
// An open for writing that writes nothing, and a write by root, keep them.
func TestPosixSetuidKill(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	var setup, asNobody, after []fsop
	setup = append(setup, op.createMode("source", 0o644, "src"))
	for _, where := range []string{"new", "lower"} {
		for _, m := range suidModes {
			for _, c := range append(suidCases, struct {
				name string
				ops  func(p string) []fsop
			}{"rootwrite", nil}) {
				p := where + "-" + m.name + "-" + c.name
				if where == "new" {
					setup = append(setup, op.create(p, "data"), op.chmod(p, m.mode))
				}
				if c.ops != nil {
					asNobody = append(asNobody, c.ops(p)...)
				} else {
					after = append(after, op.write(p, 0, "r"))
				}
				after = append(after, op.lstat(p))
			}
		}
	}
	posixCompare(t, func(t *testing.T, dir string) {
		var b strings.Builder
		for _, m := range suidModes {
			for _, c := range append([]string{"rootwrite"}, func() []string {
				var n []string
				for _, c := range suidCases {
					n = append(n, c.name)
				}
				return n
			}()...) {
				fmt.Fprintf(&b, "echo data > lower-%s-%s; chmod %o lower-%s-%s\n", m.name, c, m.mode, m.name, c)
			}
		}
		runScript(t, dir, "lower", b.String())
	}, []posixPhase{{nil, setup}, {nobody, asNobody}, {nil, after}})
}

// TestBuildClearsSetuidOnWrite: an install leaves a setuid (and a
// setgid) file that others may write; the next layer's install writes to
// them as nobody; the committed layer has the bits cleared, under both
// drivers.
func TestBuildClearsSetuidOnWrite(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	needTool(t, "setpriv")
	spec := `image: oci:out:suid
layers:
  - name: a
    type: packages
    packages: [a]
    install: |
      set -e
      mkdir -p "$LAYERFS_ROOT/usr/bin"
      echo tool > "$LAYERFS_ROOT/usr/bin/tool"; chmod 4777 "$LAYERFS_ROOT/usr/bin/tool"
      echo gtool > "$LAYERFS_ROOT/usr/bin/gtool"; chmod 2777 "$LAYERFS_ROOT/usr/bin/gtool"
      echo keep > "$LAYERFS_ROOT/usr/bin/keep"; chmod 4777 "$LAYERFS_ROOT/usr/bin/keep"
  - name: b
    type: packages
    packages: [b]
    install: |
      set -e
      # From inside the mount: nobody may not walk the cache's path to it.
      cd "$LAYERFS_ROOT/usr/bin"
      setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo more >> tool; echo more >> gtool'
      echo root >> keep
`
	for _, driver := range []string{"kernel", "fuse"} {
		t.Run(driver, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(spec), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			r := layerfsBuild(ctx, t, dir, nil, "spec.yaml", "--cache", filepath.Join(dir, "cache"), "--driver", driver)
			if r.err != nil {
				t.Fatalf("build: %v\n%s", r.err, r.stderr)
			}
			out, err := exec.Command(layerfsBin, "ls", "oci:"+filepath.Join(dir, "out")+":suid", "/usr/bin", "--json").Output()
			if err != nil {
				t.Fatal(err)
			}
			var ents []struct {
				Path  string `json:"path"`
				Mode  string `json:"mode"`
				Layer int    `json:"layer"`
			}
			if err := json.Unmarshal(out, &ents); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"/usr/bin/tool": "0777", "/usr/bin/gtool": "0777", "/usr/bin/keep": "4777"}
			for _, e := range ents {
				if w, ok := want[e.Path]; ok && (e.Mode != w || e.Layer != 2) {
					t.Errorf("%s: mode %s in layer %d, want %s in layer 2", e.Path, e.Mode, e.Layer, w)
				}
				delete(want, e.Path)
			}
			if len(want) > 0 {
				t.Errorf("the image lacks %v", want)
			}
		})
	}
}
