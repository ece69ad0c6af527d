package integration

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/testenv"
)

// Ownership under a fake root. bitbake runs IMAGE_CMD as a normal user
// under pseudo (an LD_PRELOAD fake root, which layerfs's raw system calls
// bypass), or a user runs fakeroot. Owners reach the layer by two routes:
// a rootfs as a tar stream made under the fake root (--rootfs-tar), and
// package installs through a layerfs mount, whose chowns reach the mount's
// daemon (pseudo with the mountpoint in PSEUDO_IGNORE_PATHS; fakeroot
// tries the real chown as well). In every layer the owners are exactly
// what the fake root was told, also where that is the builder's own uid,
// and what was never chowned is root's, as under rootless podman.

// fakeRootUser is an unprivileged user with a work dir, a copy of the
// layerfs binary it may run, and /dev/fuse usable.
type fakeRootUser struct {
	uid, gid int
	work     string
	bin      string
}

func newFakeRootUser(t *testing.T, tools ...string) *fakeRootUser {
	t.Helper()
	testenv.NeedRoot(t)
	for _, tool := range append([]string{"fusermount3", "useradd", "tar"}, tools...) {
		needTool(t, tool)
	}
	const name = "layerfs-test"
	if _, err := user.Lookup(name); err != nil {
		if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/bin/sh", name).CombinedOutput(); err != nil {
			t.Fatalf("useradd: %v %s", err, out)
		}
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	st, err := os.Stat("/dev/fuse")
	if err != nil {
		testenv.Unavailable(t, "/dev/fuse: %v", err)
	}
	if st.Mode().Perm() != 0o666 {
		os.Chmod("/dev/fuse", 0o666)
		t.Cleanup(func() { os.Chmod("/dev/fuse", st.Mode().Perm()) })
	}
	base, err := os.MkdirTemp("", "lfs-fakeroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	bin := filepath.Join(base, "layerfs")
	copyTree(t, layerfsBin, bin)
	os.Chmod(bin, 0o755)
	work := filepath.Join(base, "w")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(work, uid, gid); err != nil {
		t.Fatal(err)
	}
	return &fakeRootUser{uid: uid, gid: gid, work: work, bin: bin}
}

// run runs a bash script as the user in its work dir, with $LAYERFS set
// to the binary, $ME to "uid:gid", and pseudo's state in the work dir.
func (u *fakeRootUser) run(t *testing.T, script string) string {
	t.Helper()
	cmd := exec.Command("bash", "-c", "set -euo pipefail\numask 022\n"+script)
	cmd.Dir = u.work
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", "HOME=" + u.work,
		"LAYERFS=" + u.bin, fmt.Sprintf("ME=%d:%d", u.uid, u.gid),
		// Debian's pseudo is built for /usr; its database and server
		// socket go where this user may write.
		"PSEUDO_PREFIX=/usr", "PSEUDO_LOCALSTATEDIR=" + filepath.Join(u.work, "pseudo-state"),
		"SOURCE_DATE_EPOCH=1000000000",
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{}}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("as uid %d: %v\n%s\n--- script ---\n%s", u.uid, err, out.String(), script)
	}
	return out.String()
}

// stopPseudo ends the pseudo server the user's commands started.
func (u *fakeRootUser) stopPseudo(t *testing.T) {
	t.Cleanup(func() {
		cmd := exec.Command("pseudo", "-S")
		cmd.Dir = u.work
		cmd.Env = []string{"PATH=/usr/bin:/bin", "PSEUDO_PREFIX=/usr", "PSEUDO_LOCALSTATEDIR=" + filepath.Join(u.work, "pseudo-state")}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{}}}
		cmd.Run()
	})
}

// fakeRootfsScript makes rootfs/ and sets its owners and modes, run under
// a fake root: root's, 1000:1000 for a home, the builder's own ids for
// one file, a setuid file, a sticky dir, a device node and a symlink.
const fakeRootfsScript = `mkdir -p rootfs/usr/bin rootfs/home/u rootfs/tmp rootfs/etc rootfs/dev rootfs/opt/app
echo su > rootfs/usr/bin/su
echo profile > rootfs/home/u/.profile
echo conf > rootfs/etc/app.conf
echo own > rootfs/opt/app/own
ln -s usr/bin rootfs/bin
mknod rootfs/dev/null c 1 3
chown -R 0:0 rootfs
chown -R 1000:1000 rootfs/home/u
chown "$ME" rootfs/opt/app/own
chmod 4755 rootfs/usr/bin/su
chmod 1777 rootfs/tmp
chmod 700 rootfs/home/u
chmod 666 rootfs/dev/null
`

// rootfsSpec takes the rootfs's files, from --rootfs-tar, in three layers.
const rootfsSpec = `image: oci:img:build
layers:
  - {name: sys, type: directories, paths: [/usr, /tmp, /dev, /bin]}
  - {name: home, type: directories, paths: [/home/u]}
  - {name: app, type: files, paths: [/opt/app/own, /etc/app.conf]}
`

// wantRootfsCommit is the commit of the whole rootfs; ME stands for the
// builder's uid:gid.
var wantRootfsCommit = []string{
	"2 bin 0:0 777 -> usr/bin",
	"5 dev 0:0 755", "3 dev/null 0:0 666 1,3",
	"5 etc 0:0 755", "0 etc/app.conf 0:0 644",
	"5 home 0:0 755", "5 home/u 1000:1000 700", "0 home/u/.profile 1000:1000 644",
	"5 opt 0:0 755", "5 opt/app 0:0 755", "0 opt/app/own ME 644",
	"5 tmp 0:0 1777",
	"5 usr 0:0 755", "5 usr/bin 0:0 755", "0 usr/bin/su 0:0 4755",
}

// wantRootfsBuild is the build of rootfsSpec, layer by layer.
var wantRootfsBuild = [][]string{
	{"2 bin 0:0 777 -> usr/bin", "5 dev 0:0 755", "3 dev/null 0:0 666 1,3", "5 tmp 0:0 1777",
		"5 usr 0:0 755", "5 usr/bin 0:0 755", "0 usr/bin/su 0:0 4755"},
	{"5 home 0:0 755", "5 home/u 1000:1000 700", "0 home/u/.profile 1000:1000 644"},
	{"5 etc 0:0 755", "0 etc/app.conf 0:0 644", "5 opt 0:0 755", "5 opt/app 0:0 755", "0 opt/app/own ME 644"},
}

// packagesSpec installs through the mount under the fake root: one file
// chowned to 1000:1000, one to root, one to the builder's own ids, one
// setuid root, one left as created, one created in a setgid directory of
// a group the builder is not in; the command records who it runs as and
// what the fake root says of a file outside the mount that it chowns.
const packagesSpec = `image: oci:img:pkgs
layers:
  - name: pkg
    type: packages
    packages: [demo]
    install: |
      set -e
      r="$LAYERFS_ROOT/opt/pkg"
      mkdir -p "$r"
      id -u > "$r/whoami"
      echo a > "$r/user-owned"; chown 1000:1000 "$r/user-owned"
      echo b > "$r/root-owned"; chown 0:0 "$r/root-owned"
      echo c > "$r/builder-owned"; chown ME "$r/builder-owned"
      echo d > "$r/suid"; chown 0:0 "$r/suid"; chmod 4755 "$r/suid"
      echo e > "$r/unchowned"
      mkdir "$r/mail"; chown 0:50 "$r/mail"; chmod 2775 "$r/mail"; echo f > "$r/mail/new"
      touch "$HOME/outside"; chown 1000:1000 "$HOME/outside"; stat -c %u:%g "$HOME/outside" > "$r/outside"
`

var wantPackages = []string{
	"5 opt 0:0 755", "5 opt/pkg 0:0 755",
	"0 opt/pkg/builder-owned ME 644",
	"5 opt/pkg/mail 0:50 2775", "0 opt/pkg/mail/new 0:50 644",
	"0 opt/pkg/outside 0:0 644",
	"0 opt/pkg/root-owned 0:0 644",
	"0 opt/pkg/suid 0:0 4755",
	"0 opt/pkg/unchowned 0:0 644",
	"0 opt/pkg/user-owned 1000:1000 644",
	"0 opt/pkg/whoami 0:0 644",
}

// layerLines renders every layer of the image at dir:tag, read with
// archive/tar, as "TYPE NAME UID:GID MODE[ DEVICE| -> TARGET]".
func layerLines(t *testing.T, dir, tag string) [][]string {
	t.Helper()
	im, err := appliers.Image(dir, tag)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := im.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for i := range ls {
		entries, err := readLayer(im, i)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, e := range entries {
			h := e.hdr
			l := fmt.Sprintf("%c %s %d:%d %o", h.Typeflag, e.name, h.Uid, h.Gid, h.Mode)
			switch h.Typeflag {
			case tar.TypeChar, tar.TypeBlock:
				l += fmt.Sprintf(" %d,%d", h.Devmajor, h.Devminor)
			case tar.TypeSymlink, tar.TypeLink:
				l += " -> " + h.Linkname
			}
			lines = append(lines, l)
		}
		out = append(out, lines)
	}
	return out
}

func (u *fakeRootUser) want(lines []string) []string {
	me := fmt.Sprintf("%d:%d", u.uid, u.gid)
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = strings.Replace(l, " ME ", " "+me+" ", 1)
	}
	return out
}

func checkLayer(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func (u *fakeRootUser) checkRootfs(t *testing.T) {
	t.Helper()
	img := filepath.Join(u.work, "img")
	got := layerLines(t, img, "commit")
	if len(got) != 1 {
		t.Fatalf("commit --rootfs-tar: %d layers", len(got))
	}
	checkLayer(t, "commit --rootfs-tar", got[0], u.want(wantRootfsCommit))
	got = layerLines(t, img, "build")
	if len(got) != len(wantRootfsBuild) {
		t.Fatalf("build --rootfs-tar: %d layers, want %d", len(got), len(wantRootfsBuild))
	}
	for i, w := range wantRootfsBuild {
		checkLayer(t, fmt.Sprintf("build --rootfs-tar, layer %d", i+1), got[i], u.want(w))
	}
}

func (u *fakeRootUser) checkPackages(t *testing.T) {
	t.Helper()
	img := filepath.Join(u.work, "img")
	got := layerLines(t, img, "pkgs")
	if len(got) != 1 {
		t.Fatalf("packages build: %d layers", len(got))
	}
	checkLayer(t, "packages layer", got[0], u.want(wantPackages))
	cat := func(p string) string {
		return strings.TrimSpace(u.run(t, `"$LAYERFS" cat oci:img:pkgs `+p))
	}
	if got := cat("/opt/pkg/whoami"); got != "0" {
		t.Errorf("the install command ran as uid %s, want 0 under the fake root", got)
	}
	if got := cat("/opt/pkg/outside"); got != "1000:1000" {
		t.Errorf("a chown outside the mount, under the fake root, reads back as %s: the install is not under the fake root's server", got)
	}
}

// On disk the fake root's owners are nowhere: all is the builder's.
func (u *fakeRootUser) checkRealOwners(t *testing.T) {
	t.Helper()
	got := u.run(t, `stat -c '%u:%g %F' rootfs/usr/bin/su rootfs/home/u/.profile rootfs/dev/null`)
	me := fmt.Sprintf("%d:%d", u.uid, u.gid)
	if want := me + " regular file\n" + me + " regular file\n" + me + " regular empty file\n"; got != want {
		t.Fatalf("the rootfs on disk:\n%s\nwant\n%s(the fake root must not really chown)", got, want)
	}
}

// pseudo: a rootfs chowned under pseudo reaches commit and build as a tar
// written by tar under pseudo; the pipeline runs under pseudo, as
// bitbake's IMAGE_CMD does.
func TestPseudoRootfsTar(t *testing.T) {
	u := newFakeRootUser(t, "pseudo")
	u.stopPseudo(t)
	os.WriteFile(filepath.Join(u.work, "spec.yaml"), []byte(rootfsSpec), 0o644)
	u.run(t, `mkdir pseudo-state
		pseudo bash -c '`+fakeRootfsScript+`'`)
	u.checkRealOwners(t)
	u.run(t, `pseudo bash -c 'set -o pipefail
		tar -cf - -C rootfs . | "$LAYERFS" commit --rootfs-tar - --image oci:img:commit >/dev/null
		tar -cf - -C rootfs . | "$LAYERFS" build spec.yaml --rootfs-tar - --cache cache >/dev/null'`)
	u.checkRootfs(t)
}

// pseudo: a packages layer installs through the layerfs mount under
// pseudo; layerfs puts the mountpoint in PSEUDO_IGNORE_PATHS, so the
// command's chowns reach the mount's daemon while it runs as root.
func TestPseudoPackagesLayer(t *testing.T) {
	u := newFakeRootUser(t, "pseudo")
	u.stopPseudo(t)
	os.WriteFile(filepath.Join(u.work, "spec.yaml"), []byte(strings.ReplaceAll(packagesSpec, "chown ME", fmt.Sprintf("chown %d:%d", u.uid, u.gid))), 0o644)
	u.run(t, `mkdir pseudo-state
		pseudo "$LAYERFS" build spec.yaml --cache cache`)
	u.checkPackages(t)
}

// fakeroot: it cannot leave a path alone, so a rootfs's owners reach the
// layer through a tar written in the same fakeroot session (-s saves it,
// -i loads it).
func TestFakerootRootfsTar(t *testing.T) {
	u := newFakeRootUser(t, "fakeroot")
	os.WriteFile(filepath.Join(u.work, "spec.yaml"), []byte(rootfsSpec), 0o644)
	u.run(t, `fakeroot -s fakeroot.state -- bash -c '`+fakeRootfsScript+`'`)
	u.checkRealOwners(t)
	u.run(t, `fakeroot -i fakeroot.state -- tar -cf - -C rootfs . | "$LAYERFS" commit --rootfs-tar - --image oci:img:commit >/dev/null
		fakeroot -i fakeroot.state -- tar -cf - -C rootfs . | "$LAYERFS" build spec.yaml --rootfs-tar - --cache cache >/dev/null`)
	u.checkRootfs(t)
}

// fakeroot: a packages layer under fakeroot runs as root, and its chowns
// reach the mount too, since fakeroot tries the real chown as well.
func TestFakerootPackagesLayer(t *testing.T) {
	u := newFakeRootUser(t, "fakeroot")
	os.WriteFile(filepath.Join(u.work, "spec.yaml"), []byte(strings.ReplaceAll(packagesSpec, "chown ME", fmt.Sprintf("chown %d:%d", u.uid, u.gid))), 0o644)
	u.run(t, `fakeroot -- "$LAYERFS" build spec.yaml --cache cache`)
	u.checkPackages(t)
}

// commit --squash-owner of a rootless mount's upper: what the user made
// and never chowned is root's, what it chowned to itself stays its own;
// without the flag both are the user's.
func TestCommitSquashOwner(t *testing.T) {
	u := newFakeRootUser(t)
	u.run(t, `mkdir upper mnt
		"$LAYERFS" mount --upper upper mnt
		touch mnt/made mnt/own mnt/root
		chown "$ME" mnt/own
		chown 0:0 mnt/root
		"$LAYERFS" umount mnt
		"$LAYERFS" commit --upper upper --image oci:img:squash --squash-owner >/dev/null
		"$LAYERFS" commit --upper upper --image oci:img:plain >/dev/null`)
	img := filepath.Join(u.work, "img")
	checkLayer(t, "--squash-owner", layerLines(t, img, "squash")[0], u.want([]string{"0 made 0:0 644", "0 own ME 644", "0 root 0:0 644"}))
	checkLayer(t, "without --squash-owner", layerLines(t, img, "plain")[0], u.want([]string{"0 made ME 644", "0 own ME 644", "0 root 0:0 644"}))
}
