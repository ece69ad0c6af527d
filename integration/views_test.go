package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// The uppers of the views' test images, written the way the kernel's
// overlayfs writes them (0:0 whiteouts, trusted.overlay.opaque), each
// committed with `layerfs commit` on the one before: tag l1, l2, l3.
const (
	viewUpper1 = `
mkf etc/passwd 'root:x:0:0'; mkf etc/hosts 127.0.0.1; mkf etc/conf.d/a a; mkf etc/conf.d/b b
mkf bin/sh sh; mkf bin/ls ls; chmod 4755 bin/sh; mkdir -p usr/bin usr/lib
mkf usr/share/doc/readme doc; setfattr -n user.k -v v usr/share/doc/readme; mkf usr/share/doc/more more
mkf var/lib/db/x x; mkf var/lib/db/sub/y y
mkf home/u/file u; chown -R 1000:1000 home/u; chmod 0700 home/u
mkf lib/libfoo.so.1 foo; ln lib/libfoo.so.1 lib/libfoo-link; ln lib/libfoo.so.1 etc/foo-hard
mkdir -p tmp dev; chmod 1777 tmp; mknod dev/null c 1 3; mknod dev/sda b 8 0; mkfifo dev/fifo
mkf sbin/ping ping; chmod 2711 sbin/ping; setfattr -n trusted.note -v hello sbin/ping
`
	// Layer 2: a whiteout of a file and of one name of a hardlink group,
	// an opaque dir, merged-usr (bin -> usr/bin over the dir bin), a new
	// hardlink pair, and copy-ups that change only a mode, an owner or an
	// xattr.
	viewUpper2 = `
mkdir -p etc/conf.d lib; mknod etc/conf.d/a c 0 0; mknod lib/libfoo-link c 0 0
mkdir -p var/lib/db; setfattr -n trusted.overlay.opaque -v y var/lib/db; mkf var/lib/db/new n
mkf usr/bin/sh sh; mkf usr/bin/ls ls; chmod 4755 usr/bin/sh; ln -s usr/bin bin
mkf usr/lib/libbar.so bar; ln usr/lib/libbar.so usr/lib/libbar.so.1
mkf etc/passwd 'root:x:0:0'; chmod 0600 etc/passwd
mkf etc/hosts 127.0.0.1; chown 5:6 etc/hosts
mkdir -p usr/share/doc; mkf usr/share/doc/readme doc; setfattr -n user.k -v w usr/share/doc/readme
`
	// Layer 3, the one the diff test looks for.
	viewUpper3 = `
mkf etc/new new; ln -s ../usr/bin/sh etc/shell
mkf etc/hosts 127.0.0.2; chown 5:6 etc/hosts
mkdir -p usr; mknod usr/share c 0 0
mkf opt/tree/a a; mkf opt/tree/sub/b b
mkdir -p home/u; chown 1000:1000 home/u; chmod 0750 home/u
mkdir -p var/lib; mkf var/lib/db 'now a file'
mkdir -p etc/conf.d; ln -s ../passwd etc/conf.d/b
`
)

// viewImages builds oci:DIR:l1, l2 and l3 and returns DIR.
func viewImages(t *testing.T) string {
	t.Helper()
	testenv.NeedRoot(t)
	for _, tool := range []string{"bash", "setfattr", "mknod", "mkfifo"} {
		needTool(t, tool)
	}
	tmp := t.TempDir()
	out := filepath.Join(tmp, "img")
	var lowers []string
	for i, script := range []string{viewUpper1, viewUpper2, viewUpper3} {
		upper := filepath.Join(tmp, fmt.Sprintf("u%d", i+1))
		if err := os.Mkdir(upper, 0o755); err != nil {
			t.Fatal(err)
		}
		runScript(t, upper, fmt.Sprintf("upper %d", i+1), script)
		args := []string{"--upper", upper, "--image", fmt.Sprintf("oci:%s:l%d", out, i+1), "--source-date-epoch", "1700000000"}
		for _, l := range lowers {
			args = append(args, "--lower", l)
		}
		if i > 0 {
			args = append(args, "--base", fmt.Sprintf("oci:%s:l%d", out, i))
		}
		if i == 2 {
			args = append(args, "--entrypoint", "/bin/sh", "--cmd=-c", "--cmd", "echo hi", "--env", "A=1", "--env", "PATH=/usr/bin",
				"--label", "org.example.k=v", "--port", "8080/tcp", "--port", "53/udp", "--user", "1000:1000",
				"--workdir", "/home/u", "--stop-signal", "SIGTERM", "--history", "third layer")
		}
		layerfsCommit(t, args...)
		lowers = append(lowers, upper)
	}
	return out
}

// viewRun runs layerfs and returns stdout, stderr and the exit status.
func viewRun(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(layerfsBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &exit):
		return stdout.String(), stderr.String(), exit.ExitCode()
	}
	t.Fatalf("layerfs %s: %v", strings.Join(args, " "), err)
	return "", "", 0
}

func viewRunOK(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, code := viewRun(t, args...)
	if code != 0 {
		t.Fatalf("layerfs %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return stdout
}

// viewLsEntry is one element of `layerfs ls --json`.
type viewLsEntry struct {
	Path   string            `json:"path"`
	Type   string            `json:"type"`
	Mode   string            `json:"mode"`
	UID    uint32            `json:"uid"`
	GID    uint32            `json:"gid"`
	Size   *int64            `json:"size"`
	Mtime  string            `json:"mtime"`
	Link   *string           `json:"link"`
	Major  *uint32           `json:"major"`
	Minor  *uint32           `json:"minor"`
	Xattrs map[string][]byte `json:"xattrs"`
	Layer  int               `json:"layer"`
	Links  []string          `json:"links"`
	Digest string            `json:"digest"`
}

func viewLs(t *testing.T, args ...string) []viewLsEntry {
	t.Helper()
	out := viewRunOK(t, append([]string{"ls", "--json"}, args...)...)
	var es []viewLsEntry
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		t.Fatalf("ls --json %v: %v\n%s", args, err, out)
	}
	return es
}

// viewTree turns `ls -l -R --json` of ref into a tree.Tree, the content
// of each regular file taken from `layerfs cat`.
func viewTree(t *testing.T, ref string) (tree.Tree, map[string]int) {
	t.Helper()
	tr := tree.Tree{}
	layers := map[string]int{}
	for _, e := range viewLs(t, "-l", "-R", ref) {
		rel := strings.TrimPrefix(e.Path, "/")
		mode, err := strconv.ParseUint(e.Mode, 8, 32)
		if err != nil {
			t.Fatalf("%s: mode %q: %v", e.Path, e.Mode, err)
		}
		mtime, err := time.Parse(time.RFC3339Nano, e.Mtime)
		if err != nil {
			t.Fatalf("%s: mtime %q: %v", e.Path, e.Mtime, err)
		}
		te := &tree.Entry{Type: tree.Type(e.Type), Mode: uint32(mode), Uid: e.UID, Gid: e.GID, Mtime: mtime.Unix(), Xattrs: e.Xattrs}
		if te.Xattrs == nil {
			te.Xattrs = map[string][]byte{}
		}
		if e.Link != nil {
			te.Link = *e.Link
		}
		if e.Major != nil {
			te.Major, te.Minor = *e.Major, *e.Minor
		}
		for _, l := range e.Links {
			te.Links = append(te.Links, strings.TrimPrefix(l, "/"))
		}
		if te.Type == tree.File {
			te.Size = *e.Size
			content := viewRunOK(t, "cat", ref, e.Path)
			if te.Digest, err = tree.DigestReader(strings.NewReader(content), int64(len(content))); err != nil {
				t.Fatal(err)
			}
			if int64(len(content)) != te.Size {
				t.Errorf("%s: cat gave %d bytes, ls says %d", e.Path, len(content), te.Size)
			}
		}
		tr[rel] = te
		layers[rel] = e.Layer
	}
	return tr, layers
}

// TestViewsMatchUmoci: `ls -l -R --json` plus `cat` of every file of each
// test image equal what `umoci unpack` leaves on disk: types, modes,
// owners, sizes, contents, link targets, devices, xattrs, mtimes and
// hardlink groups. The same listing comes from an oci-archive copy.
func TestViewsMatchUmoci(t *testing.T) {
	dir := viewImages(t)
	needTool(t, "umoci")
	for _, tag := range []string{"l1", "l2", "l3"} {
		t.Run(tag, func(t *testing.T) {
			want := unpackUmoci(t, dir, tag)
			got, layers := viewTree(t, "oci:"+dir+":"+tag)
			if len(want) < 20 {
				t.Fatalf("umoci unpacked only %d paths: the fixture is broken", len(want))
			}
			for _, d := range tree.Diff(want, got, tree.Options{}) {
				t.Errorf("layerfs ls/cat differs from umoci unpack: %s", d)
			}
			for p, l := range layers {
				if l < 1 || l > int(tag[1]-'0') {
					t.Errorf("%s: layer %d out of range for %s", p, l, tag)
				}
			}
		})
	}

	// Layer attribution, spot-checked where the fixture decides it.
	_, layers := viewTree(t, "oci:"+dir+":l3")
	for p, want := range map[string]int{
		"bin": 2, "usr/bin/sh": 2, "etc/passwd": 2, "etc/hosts": 3, "etc/foo-hard": 1, "lib/libfoo.so.1": 1,
		"var/lib/db": 3, "home/u": 3, "home/u/file": 1, "dev/null": 1, "etc/conf.d/b": 3, "opt/tree/sub/b": 3,
	} {
		if layers[p] != want {
			t.Errorf("%s comes from layer %d, want %d", p, layers[p], want)
		}
	}

}

// TestViewsAcrossTransports: the same image read from an oci-archive, a
// docker-archive and a registry lists the same, byte for byte, and diff
// finds no change between the transports.
func TestViewsAcrossTransports(t *testing.T) {
	dir := viewImages(t)
	needTool(t, "skopeo")
	ref := "oci:" + dir + ":l3"
	tmp := t.TempDir()
	reg := startRegistry(t, false)
	remote := reg.ref("views") + ":l3"
	if _, stderr := regCopy(t, regIsolatedEnv(t), "--insecure", ref, remote); stderr != "" {
		t.Logf("copy to the registry: %s", stderr)
	}
	others := []string{
		"oci-archive:" + filepath.Join(tmp, "img.tar"),
		"docker-archive:" + filepath.Join(tmp, "docker.tar"),
	}
	mustRun(t, "", "skopeo", "copy", ref, others[0]+":l3")
	mustRun(t, "", "skopeo", "copy", ref, others[1]+":views:l3")
	want := viewRunOK(t, "ls", "-l", "-R", "--json", "--digests", ref)
	for _, other := range append(others, remote) {
		args := []string{"ls", "-l", "-R", "--json", "--digests", other}
		if strings.HasPrefix(other, "docker://") {
			args = append(args, "--insecure")
		}
		if got := viewRunOK(t, args...); got != want {
			t.Errorf("ls of %s differs from ls of the layout", other)
		}
		args = []string{"diff", ref, other}
		if strings.HasPrefix(other, "docker://") {
			args = append(args, "--insecure")
		}
		if got := viewRunOK(t, args...); got != "" {
			t.Errorf("diff of the layout and %s: %q, want nothing", other, got)
		}
	}
	if got := viewRunOK(t, "cat", "--insecure", remote, "/etc/shell"); got != "sh" {
		t.Errorf("cat /etc/shell from the registry = %q", got)
	}
}

// TestViewsLsFormats: the long format, a file PATH, a symlink PATH with
// and without a trailing slash, the plain listing and --digests.
func TestViewsLsFormats(t *testing.T) {
	dir := viewImages(t)
	ref := "oci:" + dir + ":l3"
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"ls", "-l", ref, "/usr/bin/sh"}, "-rwsr-xr-x 1 0:0 2 2023-11-14 22:13:20 L2 /usr/bin/sh\n"},
		{[]string{"ls", "-l", ref, "bin"}, "lrwxrwxrwx 1 0:0 7 2023-11-14 22:13:20 L2 /bin -> usr/bin\n"},
		{[]string{"ls", ref, "/bin/"}, "/usr/bin/ls\n/usr/bin/sh\n"},
		{[]string{"ls", ref, "/usr"}, "/usr/bin\n/usr/lib\n"},
		{[]string{"ls", "-l", ref, "/dev"}, "" +
			"prw-r--r-- 1 0:0    0 2023-11-14 22:13:20 L1 /dev/fifo\n" +
			"crw-r--r-- 1 0:0 1, 3 2023-11-14 22:13:20 L1 /dev/null\n" +
			"brw-r--r-- 1 0:0 8, 0 2023-11-14 22:13:20 L1 /dev/sda\n"},
		{[]string{"ls", "-l", ref, "/usr/lib"}, "" +
			"-rw-r--r-- 2 0:0 3 2023-11-14 22:13:20 L2 /usr/lib/libbar.so\n" +
			"-rw-r--r-- 2 0:0 3 2023-11-14 22:13:20 L2 /usr/lib/libbar.so.1\n"},
		{[]string{"ls", "-R", ref, "/opt"}, "/opt/tree\n/opt/tree/a\n/opt/tree/sub\n/opt/tree/sub/b\n"},
		{[]string{"ls", "-l", "--digests", ref, "/etc/new"}, "-rw-r--r-- 1 0:0 3 2023-11-14 22:13:20 L3 /etc/new sha256:" + sha256Hex("new") + "\n"},
	}
	for _, c := range cases {
		if got := viewRunOK(t, c.args...); got != c.want {
			t.Errorf("layerfs %s:\n%s\nwant:\n%s", strings.Join(c.args, " "), got, c.want)
		}
	}
	for _, c := range []struct{ path, mode string }{{"/sbin/ping", "-rwx--s--x"}, {"/tmp", "drwxrwxrwt"}, {"/home/u", "drwxr-x---"}} {
		got := viewRunOK(t, "ls", "-l", ref, c.path)
		if c.path == "/tmp" || c.path == "/home/u" {
			got = viewRunOK(t, "ls", "-l", ref, path.Dir(c.path))
			for _, l := range strings.Split(got, "\n") {
				if strings.HasSuffix(l, " "+c.path) {
					got = l
				}
			}
		}
		if !strings.HasPrefix(got, c.mode+" ") {
			t.Errorf("ls -l %s: %q, want mode %s", c.path, got, c.mode)
		}
	}
	es := viewLs(t, "--digests", ref, "/etc/passwd")
	if len(es) != 1 || es[0].Digest != "sha256:"+sha256Hex("root:x:0:0") || es[0].Mode != "0600" || es[0].Layer != 2 {
		t.Errorf("ls --json --digests /etc/passwd: %+v", es)
	}
	// cat follows symlinks inside the image, through the merged-usr link.
	if got := viewRunOK(t, "cat", ref, "/etc/shell"); got != "sh" {
		t.Errorf("cat /etc/shell = %q, want sh (../usr/bin/sh)", got)
	}
	if got := viewRunOK(t, "cat", ref, "/etc/conf.d/b"); got != "root:x:0:0" {
		t.Errorf("cat /etc/conf.d/b = %q, want /etc/passwd's content", got)
	}
	if got := viewRunOK(t, "cat", ref, "/bin/sh"); got != "sh" {
		t.Errorf("cat /bin/sh = %q", got)
	}
}

func sha256Hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// TestViewsDiffOneLayer: `layerfs diff l2 l3` lists exactly layer 3's
// changes, checked against the list the fixture means and against the
// layer tar itself; the reverse diff mirrors it; an image does not
// differ from itself.
func TestViewsDiffOneLayer(t *testing.T) {
	dir := viewImages(t)
	l2, l3 := "oci:"+dir+":l2", "oci:"+dir+":l3"
	want := []string{
		"C /etc/conf.d/b (type)",
		"C /etc/hosts (content)",
		"A /etc/new",
		"A /etc/shell",
		"C /home/u (mode)",
		"A /opt",
		"A /opt/tree",
		"A /opt/tree/a",
		"A /opt/tree/sub",
		"A /opt/tree/sub/b",
		"D /usr/share",
		"C /var/lib/db (type)",
	}
	got := strings.Split(strings.TrimSuffix(viewRunOK(t, "diff", l2, l3), "\n"), "\n")
	if !slices.Equal(got, want) {
		t.Errorf("diff l2 l3:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	// Every listed path is an entry or a whiteout of layer 3, and every
	// non-directory entry and whiteout of layer 3 is listed: the
	// directories left out are parents the layer repeats unchanged.
	img, err := appliers.Image(dir, "l3")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := readLayer(img, -1)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, l := range got {
		p := strings.Fields(l)[1]
		listed[strings.TrimPrefix(p, "/")] = true
	}
	inLayer := map[string]bool{}
	for _, e := range entries {
		name := strings.TrimPrefix(e.name, "./")
		if e.isWhiteout() {
			name = whiteoutTarget(name)
		}
		inLayer[name] = true
		if (e.isWhiteout() || e.hdr.Typeflag != '5') && !listed[name] {
			t.Errorf("layer 3 has %q, which diff does not list", e.hdr.Name)
		}
	}
	for p := range listed {
		if !inLayer[p] {
			t.Errorf("diff lists %s, which layer 3 does not touch", p)
		}
	}

	var j struct {
		Added   []string `json:"added"`
		Removed []string `json:"removed"`
		Changed []struct {
			Path   string   `json:"path"`
			Fields []string `json:"fields"`
		} `json:"changed"`
	}
	out := viewRunOK(t, "diff", "--json", l3, l2)
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("diff --json: %v\n%s", err, out)
	}
	// Everything beneath an added dir is listed, and nothing beneath a
	// removed one or one that became a file.
	if w := []string{"/usr/share", "/usr/share/doc", "/usr/share/doc/more", "/usr/share/doc/readme", "/var/lib/db/new"}; !slices.Equal(j.Added, w) {
		t.Errorf("reverse diff added %q, want %q", j.Added, w)
	}
	if w := []string{"/etc/new", "/etc/shell", "/opt"}; !slices.Equal(j.Removed, w) {
		t.Errorf("reverse diff removed %q, want %q", j.Removed, w)
	}
	if len(j.Changed) != 4 || j.Changed[0].Path != "/etc/conf.d/b" || j.Changed[1].Path != "/etc/hosts" || !slices.Equal(j.Changed[1].Fields, []string{"content"}) {
		t.Errorf("reverse diff changed %+v", j.Changed)
	}
	if out := viewRunOK(t, "diff", "--json", l3, l3); out != "{\n  \"added\": [],\n  \"removed\": [],\n  \"changed\": []\n}\n" {
		t.Errorf("an image differs from itself: %s", out)
	}
	// l1 to l2: the mode-only, owner-only and xattr-only copy-ups count.
	got = strings.Split(strings.TrimSuffix(viewRunOK(t, "diff", "oci:"+dir+":l1", l2), "\n"), "\n")
	for _, w := range []string{"C /etc/passwd (mode)", "C /etc/hosts (owner)", "C /usr/share/doc/readme (xattrs)", "C /bin (type)", "D /etc/conf.d/a", "D /lib/libfoo-link", "D /var/lib/db/x", "D /var/lib/db/sub", "A /var/lib/db/new"} {
		if !slices.Contains(got, w) {
			t.Errorf("diff l1 l2 lacks %q: %q", w, got)
		}
	}
	if slices.Contains(got, "D /bin/sh") {
		t.Errorf("diff l1 l2 lists /bin/sh beneath the dir that became a symlink: %q", got)
	}
}

// TestInspectAgreesWithSkopeo: `inspect --json` gives the manifest
// digest, layers and config that skopeo reads from the same image, and
// entry counts equal to the layers' tar entries.
func TestInspectAgreesWithSkopeo(t *testing.T) {
	dir := viewImages(t)
	needTool(t, "skopeo")
	ref := "oci:" + dir + ":l3"
	var got struct {
		Reference    string            `json:"reference"`
		Digest       string            `json:"digest"`
		MediaType    string            `json:"media_type"`
		Size         int64             `json:"size"`
		ConfigDigest string            `json:"config_digest"`
		OS           string            `json:"os"`
		Architecture string            `json:"architecture"`
		Variant      string            `json:"variant"`
		Created      string            `json:"created"`
		Annotations  map[string]string `json:"annotations"`
		Config       struct {
			Entrypoint   []string          `json:"entrypoint"`
			Cmd          []string          `json:"cmd"`
			Env          []string          `json:"env"`
			Labels       map[string]string `json:"labels"`
			ExposedPorts []string          `json:"exposed_ports"`
			User         string            `json:"user"`
			WorkingDir   string            `json:"working_dir"`
			StopSignal   string            `json:"stop_signal"`
		} `json:"config"`
		Layers []struct {
			Digest    string `json:"digest"`
			DiffID    string `json:"diff_id"`
			Size      int64  `json:"size"`
			MediaType string `json:"media_type"`
			CreatedBy string `json:"created_by"`
			Comment   string `json:"comment"`
			Entries   *int   `json:"entries"`
			Files     *int   `json:"files"`
			Whiteouts *int   `json:"whiteouts"`
		} `json:"layers"`
	}
	out := viewRunOK(t, "inspect", "--json", ref)
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}

	raw := mustRunStdout(t, "skopeo", "inspect", "--raw", ref)
	var manifest struct {
		MediaType string `json:"mediaType"`
		Config    struct {
			Digest string `json:"digest"`
		} `json:"config"`
		Layers []struct {
			MediaType string `json:"mediaType"`
			Digest    string `json:"digest"`
			Size      int64  `json:"size"`
		} `json:"layers"`
	}
	if err := json.Unmarshal([]byte(raw), &manifest); err != nil {
		t.Fatal(err)
	}
	if d := "sha256:" + sha256Hex(raw); got.Digest != d || got.Size != int64(len(raw)) || got.MediaType != manifest.MediaType || got.ConfigDigest != manifest.Config.Digest {
		t.Errorf("inspect: digest %s size %d media type %s config %s; skopeo's manifest: %s, %d bytes, %s, config %s",
			got.Digest, got.Size, got.MediaType, got.ConfigDigest, d, len(raw), manifest.MediaType, manifest.Config.Digest)
	}
	if len(got.Layers) != 3 || len(manifest.Layers) != 3 {
		t.Fatalf("inspect lists %d layers, skopeo %d; want 3", len(got.Layers), len(manifest.Layers))
	}

	var cfg struct {
		configJSON
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
		History []struct {
			CreatedBy  string `json:"created_by"`
			Comment    string `json:"comment"`
			EmptyLayer bool   `json:"empty_layer"`
		} `json:"history"`
	}
	if err := json.Unmarshal([]byte(mustRunStdout(t, "skopeo", "inspect", "--config", "--raw", ref)), &cfg); err != nil {
		t.Fatal(err)
	}
	var hist []int
	for i, h := range cfg.History {
		if !h.EmptyLayer {
			hist = append(hist, i)
		}
	}
	blobs, err := appliers.Image(dir, "l3")
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range got.Layers {
		m := manifest.Layers[i]
		if l.Digest != m.Digest || l.Size != m.Size || l.MediaType != m.MediaType || l.DiffID != cfg.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: %s %d %s diff_id %s; skopeo: %s %d %s diff_id %s", i+1, l.Digest, l.Size, l.MediaType, l.DiffID, m.Digest, m.Size, m.MediaType, cfg.RootFS.DiffIDs[i])
		}
		if h := cfg.History[hist[i]]; l.CreatedBy != h.CreatedBy || l.Comment != h.Comment {
			t.Errorf("layer %d: created_by %q comment %q; history says %q %q", i+1, l.CreatedBy, l.Comment, h.CreatedBy, h.Comment)
		}
		entries, err := readLayer(blobs, i)
		if err != nil {
			t.Fatal(err)
		}
		wh, files := 0, 0
		for _, e := range entries {
			switch {
			case e.isWhiteout():
				wh++
			case e.hdr.Typeflag == '0' || e.hdr.Typeflag == '1':
				files++
			}
		}
		if l.Entries == nil || *l.Entries != len(entries) || *l.Files != files || *l.Whiteouts != wh {
			t.Errorf("layer %d: counts %v/%v/%v; the tar has %d entries, %d files, %d whiteouts", i+1, l.Entries, l.Files, l.Whiteouts, len(entries), files, wh)
		}
	}
	if got.Layers[2].Comment != "third layer" {
		t.Errorf("layer 3 comment %q, want the --history of its commit", got.Layers[2].Comment)
	}
	c := got.Config
	var ports []string
	for p := range cfg.Config.ExposedPorts {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	if !slices.Equal(c.Entrypoint, cfg.Config.Entrypoint) || !slices.Equal(c.Cmd, cfg.Config.Cmd) || !slices.Equal(c.Env, cfg.Config.Env) ||
		!slices.Equal(c.ExposedPorts, ports) || c.User != cfg.Config.User || c.WorkingDir != cfg.Config.WorkingDir || c.StopSignal != cfg.Config.StopSignal ||
		fmt.Sprint(c.Labels) != fmt.Sprint(cfg.Config.Labels) || got.OS != cfg.OS || got.Architecture != cfg.Architecture {
		t.Errorf("inspect config %+v (%s/%s) differs from skopeo's %+v (%s/%s)", c, got.OS, got.Architecture, cfg.Config, cfg.OS, cfg.Architecture)
	}
	if !slices.Equal(c.Entrypoint, []string{"/bin/sh"}) || !slices.Equal(c.ExposedPorts, []string{"53/udp", "8080/tcp"}) || c.User != "1000:1000" {
		t.Errorf("inspect config %+v: not what the commit set", c)
	}

	var sk struct {
		Digest       string
		Architecture string
		Os           string
		Created      string
		Layers       []string
		Labels       map[string]string
	}
	if err := json.Unmarshal([]byte(mustRunStdout(t, "skopeo", "inspect", ref)), &sk); err != nil {
		t.Fatal(err)
	}
	if sk.Digest != got.Digest || sk.Os != got.OS || len(sk.Layers) != 3 || sk.Layers[2] != got.Layers[2].Digest || sk.Labels["org.example.k"] != "v" {
		t.Errorf("skopeo inspect %+v disagrees with layerfs inspect %s", sk, out)
	}
	if ct, err := time.Parse(time.RFC3339Nano, got.Created); err != nil || ct.Unix() != 1700000000 {
		t.Errorf("created %q: want the source date epoch", got.Created)
	}

	// --no-count reads no layer; the text form names the same things.
	if out := viewRunOK(t, "inspect", "--json", "--no-count", ref); strings.Contains(out, `"entries"`) {
		t.Errorf("inspect --no-count still counts entries:\n%s", out)
	}
	text := viewRunOK(t, "inspect", ref)
	for _, w := range []string{"Digest        " + got.Digest, "Platform      " + got.OS + "/" + got.Architecture, `Entrypoint    ["/bin/sh"]`,
		"ExposedPorts  53/udp 8080/tcp", "  3  " + got.Layers[2].Digest, "     comment     third layer", "Labels        org.example.k=v"} {
		if !strings.Contains(text, w) {
			t.Errorf("inspect text lacks %q:\n%s", w, text)
		}
	}
}

// mustRunStdout runs a program and returns its stdout alone.
func mustRunStdout(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(context.Background(), name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// TestViewsBadInput: each bad input is one line on stderr naming it, exit
// status 2, and nothing on stdout.
func TestViewsBadInput(t *testing.T) {
	dir := viewImages(t)
	ref := "oci:" + dir + ":l3"
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"malformed ref", []string{"ls", "notaref"}, `image reference "notaref"`},
		{"unknown transport", []string{"inspect", "tarball:/x"}, `unknown transport "tarball"`},
		{"bad registry ref", []string{"inspect", "docker://Bad/Repo:tag"}, `invalid repository`},
		{"missing layout", []string{"ls", "oci:" + dir + "-missing"}, dir + "-missing"},
		{"missing archive", []string{"cat", "oci-archive:" + dir + "/none.tar", "/etc/passwd"}, dir + "/none.tar"},
		{"missing tag", []string{"inspect", "oci:" + dir + ":nope"}, `no image tagged "nope"`},
		{"missing tag in diff", []string{"diff", ref, "oci:" + dir + ":gone"}, `no image tagged "gone"`},
		{"missing path", []string{"ls", ref, "/no/such"}, "/no/such: no such file or directory in the image"},
		{"path beneath a file", []string{"ls", "-l", ref, "/etc/passwd/x"}, "/etc/passwd/x: no such file or directory in the image"},
		{"cat missing", []string{"cat", ref, "/etc/nope"}, "/etc/nope: no such file or directory in the image"},
		{"cat dir", []string{"cat", ref, "/etc"}, "/etc: is a dir, not a regular file"},
		{"cat through dir symlink", []string{"cat", ref, "/bin"}, "/usr/bin: is a dir, not a regular file"},
		{"cat device", []string{"cat", ref, "/dev/null"}, "/dev/null: is a char device, not a regular file"},
		{"unreachable registry", []string{"cat", "--insecure", "docker://127.0.0.1:9/views:l3", "/etc/passwd"}, "127.0.0.1:9"},
		{"bad platform", []string{"ls", "--platform", "linux/arm/v7/x", ref}, `platform "linux/arm/v7/x"`},
		{"missing arg", []string{"cat", ref}, `expected "<PATH>"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			stdout, stderr, code := viewRun(t, c.args...)
			if code != 2 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.want) {
				t.Errorf("layerfs %s: exit %d, stdout %q, stderr %q; want exit 2, nothing on stdout and one line with %q",
					strings.Join(c.args, " "), code, stdout, stderr, c.want)
			}
		})
	}

	// A symlink loop inside the image.
	tmp := t.TempDir()
	upper := filepath.Join(tmp, "u")
	os.Mkdir(upper, 0o755)
	runScript(t, upper, "loop", "ln -s b a; ln -s a b")
	layerfsCommit(t, "--upper", upper, "--image", "oci:"+filepath.Join(tmp, "img")+":loop")
	_, stderr, code := viewRun(t, "cat", "oci:"+filepath.Join(tmp, "img")+":loop", "/a")
	if code != 2 || !strings.Contains(stderr, "/a: too many levels of symbolic links") {
		t.Errorf("cat of a symlink loop: exit %d, %q", code, stderr)
	}
}
