package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// mcMountInfo is one element of `layerfs mounts --json`.
type mcMountInfo struct {
	Mountpoint string   `json:"mountpoint"`
	Lowers     []string `json:"lowers"`
	Upper      string   `json:"upper"`
	Driver     string   `json:"driver"`
	PID        int      `json:"pid"`
	Alive      bool     `json:"alive"`
	Mounted    bool     `json:"mounted"`
}

func mcMounts(t *testing.T) []mcMountInfo {
	t.Helper()
	out, err := exec.Command(layerfsBin, "mounts", "--json").Output()
	if err != nil {
		t.Fatalf("layerfs mounts --json: %v", err)
	}
	var ms []mcMountInfo
	if err := json.Unmarshal(out, &ms); err != nil {
		t.Fatalf("layerfs mounts --json printed %q: %v", out, err)
	}
	return ms
}

func mcFind(t *testing.T, mnt string) (mcMountInfo, bool) {
	for _, m := range mcMounts(t) {
		if m.Mountpoint == mnt {
			return m, true
		}
	}
	return mcMountInfo{}, false
}

// mcMount runs `layerfs mount --driver fuse ARGS MNT` (a background
// daemon) and registers an unmount.
func mcMount(t *testing.T, mnt string, args ...string) mcMountInfo {
	t.Helper()
	return mcMountDriver(t, mnt, "fuse", args...)
}

// mcMountDriver runs `layerfs mount --driver DRIVER ARGS MNT` and
// registers an unmount: a FUSE mount has its daemon, a kernel mount none.
func mcMountDriver(t *testing.T, mnt, driver string, args ...string) mcMountInfo {
	t.Helper()
	out, err := exec.Command(layerfsBin, append(append([]string{"mount", "--driver", driver}, args...), mnt)...).CombinedOutput()
	if err != nil {
		t.Fatalf("layerfs mount --driver %s %q %s: %v\n%s", driver, args, mnt, err, out)
	}
	t.Cleanup(func() { exec.Command(layerfsBin, "umount", "--lazy", mnt).Run() })
	m, ok := mcFind(t, mnt)
	if !ok || !m.Alive || (m.PID == 0) != (driver == "kernel") || m.Driver != driver {
		t.Fatalf("after mount --driver %s, layerfs mounts shows %+v (found %v)", driver, m, ok)
	}
	checkMountDriver(t, mnt, driver)
	return m
}

func mcUmount(t *testing.T, mnt string) {
	t.Helper()
	if out, err := exec.Command(layerfsBin, "umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("layerfs umount %s: %v\n%s", mnt, err, out)
	}
}

func mcSha(t *testing.T, dir string) string {
	t.Helper()
	tr, err := tree.Snapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(tr)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// The passthrough trap: a lower file open read-only (served by passthrough
// from the lower) and then opened for writing must not get the lower file
// as its backing. The lower stays byte-identical, the merged view shows
// the write, and the read-only open really was passthrough: the daemon
// served no READ for it.
func TestMountPassthroughNeverWritesLowers(t *testing.T) {
	testenv.NeedRoot(t)
	base := t.TempDir()
	d := mkdirs(t, base, "lower", "upper", "mnt")
	runScript(t, d[0], "lower", `mkdir etc; printf 'original content of the lower file\n' > etc/f; head -c 3000000 /dev/zero > big`)
	before := mcSha(t, d[0])

	// A foreground daemon with --debug, so the test reads its requests.
	logPath, daemon := mcDebugMount(t, d[0], d[1], d[2])

	// fd 3 stays open read-only on the lower file while dd opens it for
	// writing and overwrites its start; then everything is read back.
	cmd := exec.Command("bash", "-c", `set -e
		exec 3< etc/f
		head -c 8 <&3 >/dev/null
		printf 'WRITTEN' | dd of=etc/f conv=notrunc status=none
		printf 'appended\n' >> etc/f
		cat etc/f
		exec 3<&-`)
	cmd.Dir = d[2]
	got, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("writing through the mount while a reader holds the file: %v\n%s", err, got)
	}
	if want := "WRITTENl content of the lower file\nappended\n"; string(got) != want {
		t.Errorf("merged file reads %q, want %q", got, want)
	}
	if after := mcSha(t, d[0]); after != before {
		t.Fatalf("the lower dir changed: passthrough wrote to the layer")
	}
	upper, err := os.ReadFile(filepath.Join(d[1], "etc", "f"))
	if err != nil || string(upper) != string(got) {
		t.Errorf("upper copy holds %q (%v), want the written content", upper, err)
	}

	// Passthrough was active for the read-only open: no READ reached the
	// daemon for the node the lookup of "f" returned first.
	mcUmount(t, d[2])
	daemon.Wait()
	log, _ := os.ReadFile(logPath)
	node := mcLookupNode(string(log), "f")
	if node == "" {
		t.Fatalf("no LOOKUP of f in the daemon log")
	}
	if n := mcCountOp(string(log), "READ", node); n != 0 {
		t.Errorf("the daemon served %d READs for the read-only open of f (node %s): passthrough was not used", n, node)
	}
	if !strings.Contains(string(log), "PASSTHROUGH") {
		t.Errorf("the kernel did not negotiate passthrough")
	}
}

// mcDebugMount starts `layerfs mount --driver fuse --foreground --debug`
// of lower and upper at mnt, its log (every FUSE request) at the path
// returned, and waits until it serves. The caller unmounts and waits for
// the daemon; a cleanup does both lazily in any case.
func mcDebugMount(t *testing.T, lower, upper, mnt string) (string, *exec.Cmd) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	daemon := exec.Command(layerfsBin, "mount", "--driver", "fuse", "--foreground", "--debug", "--lower", lower, "--upper", upper, mnt)
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command(layerfsBin, "umount", "--lazy", mnt).Run()
		daemon.Wait()
		logf.Close()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m, ok := mcFind(t, mnt); ok && m.Alive {
			return logPath, daemon
		}
		if time.Now().After(deadline) {
			t.Fatal("the foreground daemon did not start serving")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// go-fuse's debug log: `rx 18: LOOKUP n1  "f"  p4860` and, for the
// reply, `tx 18:     OK, {n2 g0 ...`.
var mcLookupReply = regexp.MustCompile(`(?m)rx (\d+): LOOKUP n\d+\s+"([^"]*)"`)

// mcLookupNode finds the node id the daemon answered the first LOOKUP of
// name with.
func mcLookupNode(log, name string) string {
	for _, m := range mcLookupReply.FindAllStringSubmatch(log, -1) {
		if m[2] != name {
			continue
		}
		re := regexp.MustCompile(`(?m)tx ` + m[1] + `:\s+OK, \{n(\d+) `)
		if r := re.FindStringSubmatch(log); r != nil {
			return r[1]
		}
	}
	return ""
}

func mcCountOp(log, op, node string) int {
	return len(regexp.MustCompile(`(?m)rx \d+: `+op+` n`+node+`\b`).FindAllString(log, -1))
}

// A normal user mounts through fusermount3; chown and setuid modes the
// daemon cannot apply are recorded and shown, and commit writes them.
func TestMountUnprivileged(t *testing.T) {
	// A user made for the test, /dev/fuse 0666 as a distro's udev leaves
	// it (this machine has 0600), and a copy of layerfs it may run.
	fu := newFakeRootUser(t)
	const name = "layerfs-test"
	u := struct{ Uid string }{strconv.Itoa(fu.uid)}
	bin, work := fu.bin, fu.work
	runScript(t, work, "dirs", fmt.Sprintf(`mkdir lower devlower; echo hi > lower/f; mknod devlower/null c 1 3; chmod 666 devlower/null; chown -R %s lower; chown %s .`, u.Uid, u.Uid))

	asUser := func(script string) string {
		t.Helper()
		cmd := exec.Command("su", name, "-s", "/bin/sh", "-c", "set -e; cd "+work+"; "+script)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("as %s: %v\n%s\n--- script ---\n%s", name, err, out.String(), script)
		}
		return out.String()
	}
	got := asUser(`mkdir -p upper mnt
		` + bin + ` mount --lower lower --upper upper mnt
		touch mnt/suid
		chown 0:0 mnt/suid
		chmod 4755 mnt/suid
		mkdir mnt/rootdir && chown 0:0 mnt/rootdir && chmod 0700 mnt/rootdir
		stat -c '%n %u:%g %a' mnt/suid mnt/rootdir
		` + bin + ` umount mnt
		` + bin + ` commit --upper upper --lower lower --image oci:img:t --source-date-epoch 1 >/dev/null
		`)
	if want := "mnt/suid 0:0 4755\nmnt/rootdir 0:0 700\n"; got != want {
		t.Errorf("stat through the rootless mount:\n got %q\nwant %q", got, want)
	}
	// The layer carries the recorded owners and modes.
	entries := mcLayerEntries(t, filepath.Join(work, "img"), "t")
	for name, want := range map[string]string{"suid": "0:0 4755", "rootdir": "0:0 700"} {
		if entries[name] != want {
			t.Errorf("layer entry %s: %q, want %q", name, entries[name], want)
		}
	}

	// A second mount stacks on a lower holding a device node made by root.
	got = asUser(`mkdir -p upper2 mnt2
		` + bin + ` mount --lower devlower --upper upper2 mnt2
		stat -c '%F %t,%T' mnt2/null
		` + bin + ` umount mnt2`)
	if want := "character special file 1,3\n"; got != want {
		t.Errorf("device node through the rootless mount: %q, want %q", got, want)
	}
}

// mcLayerEntries maps the names of an image's top layer to "uid:gid mode".
func mcLayerEntries(t *testing.T, img, tag string) map[string]string {
	t.Helper()
	im, err := appliers.Image(img, tag)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := im.Layers()
	if err != nil {
		t.Fatal(err)
	}
	entries, err := readLayer(im, len(ls)-1)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		out[e.name] = fmt.Sprintf("%d:%d %o", e.hdr.Uid, e.hdr.Gid, e.hdr.Mode)
	}
	return out
}

// A daemon killed with -9 leaves a dead mount; `layerfs umount` (and
// `umount --stale`, and a new mount on the same point) recover it, and the
// upper holds every fsynced write.
func TestMountDaemonKilled(t *testing.T) {
	testenv.NeedRoot(t)
	base := t.TempDir()
	d := mkdirs(t, base, "lower", "upper", "mnt")
	runScript(t, d[0], "lower", `echo base > base`)
	m := mcMount(t, d[2], "--lower", d[0], "--upper", d[1])
	runScript(t, d[2], "writes", `printf 'synced data\n' > synced && sync synced
		mkdir -p deep/dir && printf 'x' > deep/dir/f && sync deep/dir/f`)
	syscall.Kill(m.PID, syscall.SIGKILL)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if mm, _ := mcFind(t, d[2]); !mm.Alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("layerfs mounts still shows the killed daemon alive")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(d[2], &sfs); err != syscall.ENOTCONN {
		t.Fatalf("statfs of the dead mount: %v, want ENOTCONN", err)
	}
	mcUmount(t, d[2])
	if err := syscall.Statfs(d[2], &sfs); err != nil {
		t.Fatalf("after layerfs umount the mountpoint is still unusable: %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(d[1], "synced")); err != nil || string(data) != "synced data\n" {
		t.Errorf("upper/synced = %q, %v: an fsynced write is missing", data, err)
	}
	if data, err := os.ReadFile(filepath.Join(d[1], "deep/dir/f")); err != nil || string(data) != "x" {
		t.Errorf("upper/deep/dir/f = %q, %v", data, err)
	}

	// A new mount over a dead one clears it by itself.
	m = mcMount(t, d[2], "--lower", d[0], "--upper", d[1])
	syscall.Kill(m.PID, syscall.SIGKILL)
	time.Sleep(100 * time.Millisecond)
	m2 := mcMount(t, d[2], "--lower", d[0], "--upper", d[1])
	if data, err := os.ReadFile(filepath.Join(d[2], "synced")); err != nil || string(data) != "synced data\n" {
		t.Errorf("through the new mount: %q, %v", data, err)
	}
	// And --stale clears dead mounts, leaving live ones alone.
	d2 := mkdirs(t, base, "upper2", "mnt2")
	dead := mcMount(t, d2[1], "--lower", d[0], "--upper", d2[0])
	syscall.Kill(dead.PID, syscall.SIGKILL)
	time.Sleep(100 * time.Millisecond)
	out, err := exec.Command(layerfsBin, "umount", "--stale").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "cleared "+d2[1]) || strings.Contains(string(out), d[2]+"\n") {
		t.Fatalf("umount --stale: %v\n%s", err, out)
	}
	if mm, ok := mcFind(t, d[2]); !ok || !mm.Alive || mm.PID != m2.PID {
		t.Errorf("umount --stale touched the live mount: %+v", mm)
	}
	if mm, ok := mcFind(t, d2[1]); ok {
		t.Errorf("the dead mount is still listed: %+v", mm)
	}
	mcUmount(t, d[2])
}

// Bad input to mount and umount exits 2 with one line naming it.
func TestMountBadInput(t *testing.T) {
	testenv.NeedRoot(t)
	base := t.TempDir()
	d := mkdirs(t, base, "lower", "mnt")
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o644)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"mount", "--lower", filepath.Join(base, "nope"), d[1]}, "nope: does not exist"},
		{[]string{"mount", "--lower", file, d[1]}, "not a directory"},
		{[]string{"mount", "--lower", d[0], filepath.Join(base, "nomnt")}, "nomnt: does not exist"},
		{[]string{"mount", "--lower", d[0], "--workdir", base, d[1]}, "--workdir"},
		{[]string{"mount", "--lower", d[0], "--upper", filepath.Join(base, "up"), "--workdir", filepath.Join(base, "up", "work"), d[1]}, "inside the upper"},
		{[]string{"umount", d[1]}, "not a layerfs mount"},
		{[]string{"umount"}, "mountpoint"},
	}
	for _, c := range cases {
		cmd := exec.Command(layerfsBin, c.args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != 2 || !strings.Contains(stderr.String(), c.want) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("layerfs %q: exit %d, stderr %q; want 2 and one line with %q", c.args, code, stderr.String(), c.want)
		}
	}
}
