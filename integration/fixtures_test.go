package integration

// Heavy fixtures shared by the mount tests (mount_bulk_test.go,
// mount_debian_test.go), and the union mount they run against.
//
// The fixtures that cost minutes or downloads (the corpus tar, debootstrap's
// .debs, the .debs installed by dpkg) live in a cache dir keyed by the date,
// /var/cache/layerfs-test/YYYY-MM-DD (LAYERFS_TEST_CACHE overrides the
// parent): every run of one day on one machine shares them, a fresh machine
// or a new day builds them again, and older days are removed. Within one
// run each is built once (sync.Once).
//
// LAYERFS_UNION picks the union filesystem under test: "layerfs" (the
// default) mounts with `layerfs mount` and unmounts with `layerfs umount`;
// "kernel-overlayfs" (or "kernel") and "fuse-overlayfs" check the tests
// themselves against the references.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// ---------------------------------------------------------------- the union under test

// heavyUnions returns the union filesystems under test, from
// LAYERFS_UNION: layerfs under both drivers (the default), or under one
// (layerfs-fuse, layerfs-kernel), or "kernel" or "fuse-overlayfs" (the
// references, to check the tests themselves). With fuseOnly, the default
// is layerfs's FUSE driver alone: a test of layerfs's union semantics on
// bulk work has nothing to find in the kernel's. layerfs without a working
// `mount` verb is Unavailable.
func heavyUnions(t *testing.T, fuseOnly bool) []string {
	t.Helper()
	if drivers := layerfsDrivers(t); drivers != nil {
		if out, err := exec.Command(layerfsBin, "mount", "--help").CombinedOutput(); err != nil {
			testenv.Unavailable(t, "layerfs mount is not available: %v: %s", err, heavyTail(string(out), 3))
		}
		if _, err := os.Stat("/dev/fuse"); err != nil {
			testenv.Unavailable(t, "/dev/fuse: %v", err)
		}
		if fuseOnly && os.Getenv("LAYERFS_UNION") == "" {
			drivers = []string{"fuse"}
		}
		var out []string
		for _, d := range drivers {
			out = append(out, "layerfs-"+d)
		}
		return out
	}
	switch u := os.Getenv("LAYERFS_UNION"); u {
	case "kernel", "kernel-overlayfs":
		return []string{"kernel"}
	case "fuse-overlayfs":
		needTool(t, "fuse-overlayfs")
		return []string{"fuse-overlayfs"}
	default:
		t.Fatalf("LAYERFS_UNION=%q: want layerfs, layerfs-fuse, layerfs-kernel, kernel or fuse-overlayfs", u)
		return nil
	}
}

// heavyMount mounts lowers (base first) and upper at mnt with the union
// under test, and returns the unmount func, also registered as a cleanup.
// An unmount that fails is a test error. The references get a workdir
// beside the upper; layerfs uses its default workdir.
func heavyMount(t *testing.T, union string, lowers []string, upper, mnt string) func() {
	t.Helper()
	rev := make([]string, len(lowers))
	for i, l := range lowers {
		rev[len(lowers)-1-i] = l
	}
	work := upper + ".work"
	var cmd *exec.Cmd
	switch union {
	case "kernel":
		if err := os.Mkdir(work, 0o755); err != nil {
			t.Fatal(err)
		}
		opts := "lowerdir=" + strings.Join(rev, ":") + ",upperdir=" + upper + ",workdir=" + work +
			",redirect_dir=off,metacopy=off,index=off"
		if err := unix.Mount("overlay", mnt, "overlay", 0, opts); err != nil {
			t.Fatalf("mount overlay at %s (%s): %v", mnt, opts, err)
		}
	case "fuse-overlayfs":
		if err := os.Mkdir(work, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd = exec.Command("fuse-overlayfs", "-o", "lowerdir="+strings.Join(rev, ":")+",upperdir="+upper+",workdir="+work, mnt)
	case "layerfs-fuse", "layerfs-kernel":
		args := []string{"mount", "--driver", strings.TrimPrefix(union, "layerfs-")}
		for _, l := range lowers {
			args = append(args, "--lower", l)
		}
		cmd = exec.Command(layerfsBin, append(args, "--upper", upper, mnt)...)
	}
	if cmd != nil {
		start := time.Now()
		if out, err := runTimeout(cmd, 60*time.Second); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		}
		t.Logf("%s took %v", strings.Join(cmd.Args, " "), time.Since(start).Round(time.Millisecond))
		// The mount command returns once the mount is serving.
		checkMountDriver(t, mnt, strings.TrimPrefix(union, "layerfs-"))
	}
	mounted := true
	unmount := func() {
		t.Helper()
		if !mounted {
			return
		}
		mounted = false
		if err := heavyUnmount(union, mnt); err != nil {
			t.Errorf("%v", err)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
	}
	t.Cleanup(unmount)
	return unmount
}

func heavyUnmount(union, mnt string) error {
	var cmd *exec.Cmd
	switch union {
	case "kernel":
		if err := unix.Unmount(mnt, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", mnt, err)
		}
		return nil
	case "fuse-overlayfs":
		cmd = exec.Command("umount", mnt)
	default:
		cmd = exec.Command(layerfsBin, "umount", mnt)
	}
	if out, err := runTimeout(cmd, 60*time.Second); err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	if _, ok := heavyMountType(nil, mnt); ok {
		return fmt.Errorf("%s succeeded, but %s is still a mount point", strings.Join(cmd.Args, " "), mnt)
	}
	return nil
}

// heavyMountType returns the fs type of the mount whose mount point is
// exactly dir, from /proc/self/mountinfo (the last one, if stacked).
func heavyMountType(t testing.TB, dir string) (string, bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		if t != nil {
			t.Fatal(err)
		}
		return "", false
	}
	defer f.Close()
	fstype, found := "", false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || strings.ReplaceAll(fields[4], `\040`, " ") != dir {
			continue
		}
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) {
				fstype, found = fields[i+1], true
			}
		}
	}
	return fstype, found
}

// heavySubmounts lists the mount points strictly below dir.
func heavySubmounts(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 5 && strings.HasPrefix(fields[4], dir+"/") {
			out = append(out, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out
}

// ---------------------------------------------------------------- the cache

var (
	heavyCacheOnce sync.Once
	heavyCachePath string
	heavyCacheErr  error
)

var heavyDatedDir = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}$`)

// heavyCache returns today's cache dir, creating it and removing the
// dirs of other days.
func heavyCache(t testing.TB) string {
	t.Helper()
	heavyCacheOnce.Do(func() {
		parent := os.Getenv("LAYERFS_TEST_CACHE")
		if parent == "" {
			parent = "/var/cache/layerfs-test"
		}
		today := time.Now().UTC().Format("2006-01-02")
		heavyCachePath = filepath.Join(parent, today)
		if heavyCacheErr = os.MkdirAll(heavyCachePath, 0o755); heavyCacheErr != nil {
			return
		}
		ents, err := os.ReadDir(parent)
		if err != nil {
			heavyCacheErr = err
			return
		}
		for _, e := range ents {
			if e.IsDir() && heavyDatedDir.MatchString(e.Name()) && e.Name() != today {
				os.RemoveAll(filepath.Join(parent, e.Name()))
			}
		}
	})
	if heavyCacheErr != nil {
		t.Fatalf("test cache dir: %v", heavyCacheErr)
	}
	return heavyCachePath
}

// heavyRun runs a command and fails the test with its output on error.
func heavyRun(t testing.TB, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, heavyTail(out.String(), 60))
	}
	return out.String()
}

// heavyTail returns the last n lines of s.
func heavyTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// ---------------------------------------------------------------- the corpus tar

// heavyCorpusExtras adds what the Go tree lacks (it has no symlink, hardlink,
// special file, odd mode, owner or xattr) in a dir "extras" beside it.
const heavyCorpusExtras = `
mkdir -p extras/links/sub extras/modes extras/owners extras/special extras/xattrs extras/names extras/big
printf one > extras/links/a
ln extras/links/a extras/links/b
ln extras/links/a extras/links/sub/c
printf two > extras/links/x
ln extras/links/x extras/links/y
ln -s a extras/links/sym-rel
ln -s /usr/share/zoneinfo/UTC extras/links/sym-abs
ln -s does-not-exist extras/links/dangling
ln -s ../sub extras/links/sub/dirlink
ln -s "$(printf 'x%.0s' $(seq 1 200))" extras/links/long-target
for m in 4755 2755 6711 1755 0000 0600 0444 0711 0640; do printf "$m" > extras/modes/f$m; chmod $m extras/modes/f$m; done
mkdir extras/modes/sticky extras/modes/private extras/modes/setgid
chmod 1777 extras/modes/sticky; chmod 0700 extras/modes/private; chmod 2775 extras/modes/setgid
printf owned > extras/owners/f; chown 1234:5678 extras/owners/f
printf nobody > extras/owners/nobody; chown 65534:65534 extras/owners/nobody
printf suid > extras/owners/suid; chown 0:0 extras/owners/suid; chmod 4755 extras/owners/suid
mkdir extras/owners/dir; chown 1000:1000 extras/owners/dir; chmod 0750 extras/owners/dir
ln -s f extras/owners/link; chown -h 4321:8765 extras/owners/link
mknod extras/special/null c 1 3
mknod extras/special/loop7 b 7 7
mkfifo extras/special/fifo
printf x > extras/xattrs/user; setfattr -n user.greeting -v hello extras/xattrs/user
setfattr -n user.empty extras/xattrs/user
printf cap > extras/xattrs/cap; chmod 0755 extras/xattrs/cap; setcap cap_net_raw+ep extras/xattrs/cap
printf acl > extras/xattrs/acl; setfacl -m u:1234:r,g:5678:rw extras/xattrs/acl
mkdir extras/xattrs/dir; setfattr -n user.dir -v d extras/xattrs/dir; setfacl -d -m u:1234:rx extras/xattrs/dir
: > extras/names/empty
printf sp > "extras/names/with space"
printf nl > "extras/names/$(printf 'new\nline')"
printf u8 > extras/names/ünïcødé
printf lat1 > "extras/names/$(printf 'latin1-\xe9')"
printf long > "extras/names/$(printf 'n%.0s' $(seq 1 255))"
printf dot > extras/names/.hidden
head -c 3000000 /dev/urandom > extras/big/random
head -c 5000000 /dev/zero > extras/big/zeros
{ head -c 100000 /dev/urandom; head -c 2000000 /dev/zero; printf end; } > extras/big/mostly-zeros
touch -h -d @1000000000 extras/links/sym-rel extras/owners/link
touch -d @0 extras/modes/f0444
touch -d @2000000000 extras/names/empty
find extras -depth -type d -exec touch -d @1500000000 {} +
`

var heavyCorpusTools = []string{"tar", "find", "setfattr", "setfacl", "setcap", "mknod", "mkfifo", "sha256sum"}

var (
	heavyCorpusOnce sync.Once
	heavyCorpusPath string
	heavyCorpusErr  error
)

// heavyCorpus returns a tar of the Go toolchain tree (GOROOT, ~16,700
// entries) plus the extras, with owners, xattrs and ACLs: made once a day
// into the cache, atomically.
func heavyCorpus(t *testing.T) string {
	t.Helper()
	testenv.NeedRoot(t)
	for _, tool := range heavyCorpusTools {
		needTool(t, tool)
	}
	heavyCorpusOnce.Do(func() { heavyCorpusPath, heavyCorpusErr = heavyMakeCorpus(heavyCache(t)) })
	if heavyCorpusErr != nil {
		t.Fatalf("corpus: %v", heavyCorpusErr)
	}
	return heavyCorpusPath
}

func heavyMakeCorpus(cache string) (string, error) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOROOT: %w", err)
	}
	goroot := strings.TrimSpace(string(out))
	version, err := os.ReadFile(filepath.Join(goroot, "VERSION"))
	if err != nil {
		return "", err
	}
	h := sha256.Sum256([]byte(goroot + "\n" + string(version) + "\nwithout pkg, bin\n" + heavyCorpusExtras))
	tarPath := filepath.Join(cache, "corpus-"+hex.EncodeToString(h[:8])+".tar")
	if _, err := os.Stat(tarPath); err == nil {
		return tarPath, nil
	}
	tmp, err := os.MkdirTemp(cache, ".corpus-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("bash", "-c", "set -euo pipefail\numask 022\n"+heavyCorpusExtras)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("extras script: %v\n%s", err, out)
	}
	// GNU tar in its default format with xattrs (PAX records for them):
	// owners numeric, the Go tree first, then the extras.
	part := filepath.Join(tmp, "corpus.tar")
	// Without pkg/ and bin/: 20 entries, but 83 MB of compiled tools that
	// would only make every copy, hash and commit of the corpus slower.
	base := filepath.Base(goroot)
	args := []string{"--xattrs", "--xattrs-include=*", "--numeric-owner",
		"--exclude=" + base + "/pkg", "--exclude=" + base + "/bin", "-cf", part,
		"-C", filepath.Dir(goroot), base, "-C", tmp, "extras"}
	if out, err := exec.Command("tar", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("tar %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	list, err := exec.Command("tar", "-tf", part).Output()
	if err != nil {
		return "", fmt.Errorf("tar -tf %s: %w", part, err)
	}
	if n := bytes.Count(list, []byte("\n")); n < 15000 {
		return "", fmt.Errorf("the corpus has %d entries, want at least 15,000 (GOROOT %s)", n, goroot)
	}
	if err := os.Rename(part, tarPath); err != nil {
		return "", err
	}
	return tarPath, nil
}

// heavyUntar extracts a tar the way a root package manager or image tool
// does: owners, modes, xattrs (ACLs and capabilities included) kept.
func heavyUntar(t *testing.T, tarPath, dir string) {
	t.Helper()
	heavyRun(t, "", nil, "tar", "--xattrs", "--xattrs-include=*", "--numeric-owner",
		"-p", "--same-owner", "-xf", tarPath, "-C", dir)
}

// ---------------------------------------------------------------- Debian

// heavyAptSource returns the mirror URI and suite of the first Debian
// "main" source in apt's configuration (one-line and deb822 formats),
// skipping -security, -updates and -backports suites.
func heavyAptSource(t *testing.T) (uri, suite string) {
	t.Helper()
	type src struct{ uri, suite string }
	var found []src
	add := func(u, s string, comps []string) {
		if !heavyContains(comps, "main") || regexp.MustCompile(`-(security|updates|backports|proposed-updates)$`).MatchString(s) {
			return
		}
		found = append(found, src{strings.TrimRight(u, "/"), s})
	}
	var lists []string
	if _, err := os.Stat("/etc/apt/sources.list"); err == nil {
		lists = append(lists, "/etc/apt/sources.list")
	}
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	lists = append(lists, more...)
	oneLine := regexp.MustCompile(`^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$`)
	for _, f := range lists {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			line, _, _ = strings.Cut(line, "#")
			if m := oneLine.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
				add(m[2], m[3], strings.Fields(m[4]))
			}
		}
	}
	deb822, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range deb822 {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, stanza := range regexp.MustCompile(`\n\s*\n`).Split(string(data), -1) {
			kv := map[string][]string{}
			for _, line := range strings.Split(stanza, "\n") {
				if line == "" || line[0] == '#' || line[0] == ' ' || line[0] == '\t' {
					continue
				}
				k, v, ok := strings.Cut(line, ":")
				if ok {
					kv[strings.ToLower(strings.TrimSpace(k))] = strings.Fields(v)
				}
			}
			if !heavyContains(kv["types"], "deb") || (len(kv["enabled"]) > 0 && kv["enabled"][0] == "no") {
				continue
			}
			for _, u := range kv["uris"] {
				for _, s := range kv["suites"] {
					add(u, s, kv["components"])
				}
			}
		}
	}
	for _, s := range found {
		if strings.Contains(s.uri, "debian") {
			return s.uri, s.suite
		}
	}
	if len(found) > 0 {
		return found[0].uri, found[0].suite
	}
	testenv.Unavailable(t, "no Debian main source in /etc/apt/sources.list or sources.list.d")
	return "", ""
}

func heavyContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// heavyNeedDebootstrap installs debootstrap with apt-get when it is
// missing (the tests run as root); a failure is Unavailable.
func heavyNeedDebootstrap(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("debootstrap"); err == nil {
		return
	}
	cmd := exec.Command("apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		// The package lists may be missing on a fresh machine.
		if upd, uerr := exec.Command("apt-get", "update", "-q").CombinedOutput(); uerr != nil {
			testenv.Unavailable(t, "debootstrap is missing and apt-get update failed: %v\n%s", uerr, heavyTail(string(upd), 20))
		}
		out, err = cmd.CombinedOutput()
	}
	if err != nil {
		testenv.Unavailable(t, "debootstrap is missing and apt-get install debootstrap failed: %v\n%s", err, heavyTail(string(out), 20))
	}
}

var heavyDebsMu sync.Mutex

// heavyDeb returns a .deb of package pkg, downloaded once a day with
// apt-get download into the cache (apt-get update first if apt does not
// know the package).
func heavyDeb(t *testing.T, pkg string) string {
	t.Helper()
	needTool(t, "apt-get")
	heavyDebsMu.Lock()
	defer heavyDebsMu.Unlock()
	dir := filepath.Join(heavyCache(t), "debs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb")); len(m) > 0 {
		return m[len(m)-1]
	}
	tmp, err := os.MkdirTemp(dir, ".dl-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	// apt's download sandbox user must be able to write there.
	if err := os.Chmod(tmp, 0o777); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("apt-get", "download", "-q", pkg)
	cmd.Dir = tmp
	out, err := cmd.CombinedOutput()
	if err != nil {
		if upd, uerr := exec.Command("apt-get", "update", "-q").CombinedOutput(); uerr != nil {
			testenv.Unavailable(t, "apt-get download %s: %v\n%s\napt-get update: %v\n%s", pkg, err, out, uerr, heavyTail(string(upd), 20))
		}
		cmd = exec.Command("apt-get", "download", "-q", pkg)
		cmd.Dir = tmp
		out, err = cmd.CombinedOutput()
	}
	if err != nil {
		testenv.Unavailable(t, "apt-get download %s: %v\n%s", pkg, err, out)
	}
	m, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(m) != 1 {
		t.Fatalf("apt-get download %s left %v in %s", pkg, m, tmp)
	}
	final := filepath.Join(dir, filepath.Base(m[0]))
	if err := os.Rename(m[0], final); err != nil {
		t.Fatal(err)
	}
	return final
}

// heavyPodmanStore returns a podman root, runroot pair in a fresh dir
// whose path is short enough for podman (runroot < 50 bytes), removed
// (after unmounting whatever podman left) when the test ends.
func heavyPodmanStore(t *testing.T) (root, runroot string) {
	t.Helper()
	store, err := os.MkdirTemp("", "lfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := appliers.UnmountUnder(store); err != nil {
			t.Error(err)
		}
		os.RemoveAll(store)
	})
	return store + "/root", store + "/run"
}

// heavyPodmanRun copies oci:img:tag into a private containers-storage and
// runs cmd in it with podman, returning the combined output.
func heavyPodmanRun(t *testing.T, img, tag, name string, cmd ...string) (string, error) {
	t.Helper()
	root, runroot := heavyPodmanStore(t)
	ref := "localhost/" + name + ":" + tag
	storageRef := "containers-storage:[overlay@" + root + "+" + runroot + "]" + ref
	if out, err := exec.Command("skopeo", "--insecure-policy", "copy", "--quiet", "oci:"+img+":"+tag, storageRef).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy oci:%s:%s %s: %v\n%s", img, tag, storageRef, err, out)
	}
	args := []string{"--root", root, "--runroot", runroot, "--storage-driver", "overlay",
		"--runtime", "/usr/sbin/runc", "--cgroup-manager=cgroupfs", "--events-backend=file",
		"run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", ref}
	out, err := exec.Command("podman", append(args, cmd...)...).CombinedOutput()
	return string(out), err
}

// heavyCheckUpper checks that an upper written through the union under
// test is in the kernel's format, as root: no .wh.* files (whiteouts are
// 0:0 devices, opaque dirs trusted.overlay.opaque), no unprivileged
// bookkeeping xattrs (user.overlay.*, user.fuseoverlayfs.*,
// user.containers.*), and whiteouts only for names that a lower has, as
// the kernel makes them. It returns the number of whiteouts.
func heavyCheckUpper(t *testing.T, upper string, lowers []string) int {
	t.Helper()
	var problems []string
	whiteouts := 0
	err := filepath.WalkDir(upper, func(p string, _ fs.DirEntry, err error) error {
		if err != nil || p == upper {
			return err
		}
		rel, err := filepath.Rel(upper, p)
		if err != nil {
			return err
		}
		if strings.HasPrefix(filepath.Base(p), ".wh.") {
			problems = append(problems, fmt.Sprintf("%s: a .wh.* file (the kernel's format marks whiteouts with 0:0 devices)", tree.Quote(rel)))
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
			whiteouts++
			inLower := false
			for _, l := range lowers {
				if _, err := os.Lstat(filepath.Join(l, rel)); err == nil {
					inLower = true
				}
			}
			if !inLower {
				problems = append(problems, fmt.Sprintf("%s: a whiteout, but no lower has that name", tree.Quote(rel)))
			}
		}
		names, err := tree.ListXattrs(p)
		if err != nil {
			return err
		}
		for _, x := range names {
			for _, bad := range []string{"user.overlay.", "user.fuseoverlayfs.", "user.containers."} {
				if strings.HasPrefix(x, bad) {
					problems = append(problems, fmt.Sprintf("%s: xattr %s (as root the kernel's format uses trusted.overlay.*)", tree.Quote(rel), x))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scan upper %s: %v", upper, err)
	}
	bulkReportLines(t, "upper "+upper, problems)
	return whiteouts
}
