package appliers_test

import (
	"archive/tar"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/ocitest"
	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

const epoch = 1_600_000_000

func needTool(t *testing.T, name string) { t.Helper(); testenv.NeedTool(t, name) }

func hdr(name string, typ byte, mode int64) tar.Header {
	return tar.Header{Name: name, Typeflag: typ, Mode: mode, ModTime: time.Unix(epoch, 0)}
}

func dir(name string, mode int64) ocitest.Entry {
	return ocitest.Entry{Hdr: hdr(name+"/", tar.TypeDir, mode)}
}

func file(name string, mode int64, body string) ocitest.Entry {
	return ocitest.Entry{Hdr: hdr(name, tar.TypeReg, mode), Body: []byte(body)}
}

func owned(e ocitest.Entry, uid, gid int) ocitest.Entry {
	e.Hdr.Uid, e.Hdr.Gid = uid, gid
	return e
}

func withXattr(e ocitest.Entry, k, v string) ocitest.Entry {
	if e.Hdr.PAXRecords == nil {
		e.Hdr.PAXRecords = map[string]string{}
	}
	e.Hdr.PAXRecords["SCHILY.xattr."+k] = v
	return e
}

func link(name string, typ byte, target string) ocitest.Entry {
	h := hdr(name, typ, 0o777)
	h.Linkname = target
	if typ == tar.TypeLink {
		h.Mode = 0o644
	}
	return ocitest.Entry{Hdr: h}
}

func device(name string, typ byte, mode, major, minor int64) ocitest.Entry {
	h := hdr(name, typ, mode)
	h.Devmajor, h.Devminor = major, minor
	return ocitest.Entry{Hdr: h}
}

func whiteout(name string) ocitest.Entry {
	d, b := filepath.Split(name)
	return ocitest.Entry{Hdr: hdr(d+".wh."+b, tar.TypeReg, 0)}
}

// aclAccess encodes user::rw- user:1000:r-- group::r-- mask::r-- other::r--
// in the kernel's system.posix_acl_access format (version 2, then
// tag/perm/id records sorted by tag and id), what setfacl stores.
func aclAccess() string {
	type ent struct {
		tag, perm uint16
		id        uint32
	}
	const undef = 0xffffffff
	ents := []ent{{0x01, 6, undef}, {0x02, 4, 1000}, {0x04, 4, undef}, {0x10, 4, undef}, {0x20, 4, undef}}
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range ents {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return string(b)
}

// capNetRaw is security.capability for cap_net_raw+ep (VFS_CAP_REVISION_2).
func capNetRaw() string {
	b := binary.LittleEndian.AppendUint32(nil, 0x02000001)
	for _, v := range []uint32{1 << 13, 0, 0, 0} {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return string(b)
}

var (
	longName = strings.Repeat("n", 150)
	deepDir  = strings.Repeat("deep-directory-name/", 16) // 320 bytes
)

// handmadeLayers is a three-layer image in the canonical shape the
// research found safe for every applier: parents first, explicit
// whiteouts, an opaque dir, hardlinks within one layer, and one layer of
// each compression.
func handmadeLayers(t *testing.T, compression [3]string) []ocitest.Layer {
	t.Helper()
	deep := []ocitest.Entry{}
	p := ""
	for _, c := range strings.Split(strings.TrimSuffix(deepDir, "/"), "/") {
		p += c
		deep = append(deep, dir(p, 0o755))
		p += "/"
	}
	base := append([]ocitest.Entry{
		dir("bin", 0o755), file("bin/sh", 0o755, "old sh"), file("bin/keep", 0o755, "keep"),
		owned(dir("d", 0o700), 1, 1), file("d/old", 0o644, "old"), dir("d/sub", 0o755), file("d/sub/x", 0o644, "x"),
		dir("dev", 0o755), device("dev/null", tar.TypeChar, 0o666, 1, 3),
		device("dev/loop0", tar.TypeBlock, 0o660, 7, 0), device("dev/fifo", tar.TypeFifo, 0o644, 0, 0),
		dir("e", 0o755), file("e/x", 0o644, "e"),
		dir("etc", 0o755), file("etc/a.conf", 0o644, "a"), owned(file("etc/b.conf", 0o600, "b"), 1000, 1000),
		owned(file("etc/shadow", 0o640, "s"), 0, 42),
		dir("hl", 0o755), file("hl/a", 0o644, "linked"), link("hl/b", tar.TypeLink, "hl/a"),
		link("lnk", tar.TypeSymlink, "etc/a.conf"),
		dir("sbin", 0o755), file("sbin/init", 0o755, "init"),
		dir("tmp", 0o1777),
		dir("x", 0o755),
		withXattr(file("x/acl", 0o644, "acl"), "system.posix_acl_access", aclAccess()),
		withXattr(file("x/cap", 0o755, "cap"), "security.capability", capNetRaw()),
		withXattr(file("x/suid", 0o4755, "suid"), "user.foo", "bar"),
		withXattr(file("x/trusted", 0o644, "t"), "trusted.foo", "baz"),
		file("x/\xff\xfe", 0o644, "not utf-8"),
		file("x/"+longName, 0o644, "long"),
	}, deep...)
	base = append(base, file(deepDir+"leaf", 0o644, "deep"))
	top := []ocitest.Entry{
		whiteout("e"),
		dir("bin", 0o755), file("bin/.wh..wh..opq", 0, ""), file("bin/sh", 0o755, "new sh"),
		owned(dir("d", 0o700), 1, 1), whiteout("d/old"), file("d/new", 0o644, "new"),
		dir("etc", 0o755), file("etc/a.conf", 0o644, "a, changed"),
		dir("hl", 0o755), file("hl/c", 0o644, "c"), link("hl/d", tar.TypeLink, "hl/c"),
		dir("lnk", 0o750), file("lnk/inside", 0o644, "inside"),
	}
	mergedUsr := []ocitest.Entry{
		link("sbin", tar.TypeSymlink, "usr/sbin"),
		dir("usr", 0o755), dir("usr/sbin", 0o755), file("usr/sbin/init", 0o755, "init"),
	}
	var layers []ocitest.Layer
	for i, l := range [][]ocitest.Entry{base, top, mergedUsr} {
		b, err := ocitest.Tar(l)
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		layers = append(layers, ocitest.Layer{Tar: b, Compression: compression[i]})
	}
	return layers
}

// expectedScript builds, with ordinary tools, the tree that applying
// handmadeLayers must give: an oracle independent of every applier.
const expectedScript = `
set -eu
umask 022
mkdir bin d dev etc hl sbin usr usr/sbin x lnk
printf 'new sh' > bin/sh; chmod 0755 bin/sh
chown 1:1 d; chmod 0700 d; mkdir d/sub; printf x > d/sub/x; printf new > d/new
mknod dev/null c 1 3; chmod 0666 dev/null
mknod dev/loop0 b 7 0; chmod 0660 dev/loop0
mkfifo dev/fifo; chmod 0644 dev/fifo
printf 'a, changed' > etc/a.conf; printf b > etc/b.conf; chown 1000:1000 etc/b.conf; chmod 0600 etc/b.conf
printf s > etc/shadow; chown 0:42 etc/shadow; chmod 0640 etc/shadow
printf linked > hl/a; ln hl/a hl/b; printf c > hl/c; ln hl/c hl/d
chmod 0750 lnk; printf inside > lnk/inside
ln -s usr/sbin sbin.new; rmdir sbin; mv sbin.new sbin
printf init > usr/sbin/init; chmod 0755 usr/sbin/init
mkdir tmp; chmod 1777 tmp
printf acl > x/acl; setfacl -m u:1000:r x/acl
printf cap > x/cap; chmod 0755 x/cap; setcap cap_net_raw+ep x/cap
printf suid > x/suid; chmod 04755 x/suid; setfattr -n user.foo -v bar x/suid
printf t > x/trusted; setfattr -n trusted.foo -v baz x/trusted
printf 'not utf-8' > "x/$(printf '\377\376')"
printf long > "x/$LONG"
mkdir -p "$DEEP"; printf deep > "${DEEP}leaf"
find . -mindepth 1 -exec touch -h -d @1600000000 {} +
`

func init() {
	// containerd and moby log ignored xattrs through logrus; the test
	// reports them itself.
	logrus.SetLevel(logrus.ErrorLevel)
}

func TestAppliersOnHandmadeImage(t *testing.T) {
	testenv.NeedRoot(t)
	for _, tool := range []string{"setfacl", "setcap", "setfattr", "mknod"} {
		needTool(t, tool)
	}
	tmp := t.TempDir()
	wantDir := filepath.Join(tmp, "want")
	if err := os.Mkdir(wantDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-c", expectedScript)
	cmd.Dir = wantDir
	cmd.Env = append(os.Environ(), "LONG="+longName, "DEEP="+deepDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("expected tree script: %v\n%s", err, out)
	}
	want, err := tree.Snapshot(wantDir)
	if err != nil {
		t.Fatal(err)
	}
	// umoci 0.4.7 refuses zstd, so one image without it lets umoci check
	// the same content.
	for name, comp := range map[string][3]string{
		"gzip-zstd-none": {"gzip", "zstd", "none"},
		"gzip-none-gzip": {"gzip", "none", "gzip"},
	} {
		t.Run(name, func(t *testing.T) {
			layoutDir := filepath.Join(tmp, name)
			if err := ocitest.WriteImage(layoutDir, "test", handmadeLayers(t, comp)); err != nil {
				t.Fatal(err)
			}
			for _, a := range appliers.All() {
				t.Run(a.Name, func(t *testing.T) {
					for _, tool := range a.Tools {
						needTool(t, tool)
					}
					checkApplier(t, a, layoutDir, want)
				})
			}
		})
	}
}

func checkApplier(t *testing.T, a appliers.Applier, layoutDir string, want tree.Tree) {
	t.Helper()
	work := t.TempDir()
	rep, err := a.Verify(context.Background(), layoutDir, "test", work, want)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Refused != "" {
		t.Logf("refused as expected: %s", rep.Refused)
	}
	for _, k := range rep.Known {
		t.Log(k)
	}
	for _, d := range rep.Unexpected {
		t.Error(d)
	}
}

// TestVerifyCatchesBrokenLayer proves that the harness can fail: the
// merged-usr layer umoci writes for Yocto (the bin symlink, then
// whiteouts below it) makes containerd delete usr/bin/foo through the new
// link (research/oci.md §3.2, case M1), and Verify must say so.
func TestVerifyCatchesBrokenLayer(t *testing.T) {
	testenv.NeedRoot(t)
	base, err := ocitest.Tar([]ocitest.Entry{
		dir("bin", 0o755), file("bin/foo", 0o755, "old foo"),
		dir("usr", 0o755), dir("usr/bin", 0o755), file("usr/bin/foo", 0o755, "foo"),
	})
	if err != nil {
		t.Fatal(err)
	}
	top, err := ocitest.Tar([]ocitest.Entry{link("bin", tar.TypeSymlink, "usr/bin"), whiteout("bin/foo")})
	if err != nil {
		t.Fatal(err)
	}
	layoutDir := filepath.Join(t.TempDir(), "image")
	if err := ocitest.WriteImage(layoutDir, "test", []ocitest.Layer{{Tar: base}, {Tar: top}}); err != nil {
		t.Fatal(err)
	}
	wantDir := t.TempDir()
	script := "set -e; umask 022; mkdir -p usr/bin; printf foo > usr/bin/foo; chmod 0755 usr/bin/foo; ln -s usr/bin bin; " +
		"find . -mindepth 1 -exec touch -h -d @1600000000 {} +"
	if out, err := exec.Command("bash", "-c", "cd "+wantDir+" && "+script).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	want, err := tree.Snapshot(wantDir)
	if err != nil {
		t.Fatal(err)
	}
	var a appliers.Applier
	for _, x := range appliers.All() {
		if x.Name == "containerd-naive" {
			a = x
		}
	}
	rep, err := a.Verify(context.Background(), layoutDir, "test", t.TempDir(), want)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, d := range rep.Unexpected {
		lines = append(lines, d.String())
	}
	if got := strings.Join(lines, "\n"); !strings.Contains(got, `"usr/bin/foo": missing`) {
		t.Fatalf("Verify did not report the deleted usr/bin/foo; differences:\n%s", got)
	}
}
