package layers

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci"
)

func parse(t *testing.T, dir, yaml string) *Spec {
	t.Helper()
	s, err := Parse([]byte(yaml), "spec.yaml", dir)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return s
}

func TestParseSpec(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "rootfs/usr/share/app"), 0o755)
	os.WriteFile(filepath.Join(dir, "rootfs/etc.conf"), nil, 0o644)
	s := parse(t, dir, `
image: oci:out:app
mode: single
compression: zstd
exclude: ['/var/cache/**']
machine: qemux86-64
arch: arm64
variant: v8
install-timeout: 90s
versions: {busybox: 1.36.1}
layers:
  - {name: base, type: packages, packages: [base-files, busybox]}
  - {name: app, type: directories, source: rootfs, paths: [/usr/share/app]}
  - {name: extra, type: host, copy: ['rootfs/etc.conf:/etc/app.conf']}
config: {entrypoint: [/bin/sh], cmd: [], env: {B: "2", A: "1"}, labels: {}, ports: [80/tcp], user: '0', workdir: /, stop-signal: SIGTERM, author: me}
`)
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.mode() != ModeSingle || s.compression() != "zstd" || time.Duration(s.InstallTimeout) != 90*time.Second || s.arch() != "arm64" {
		t.Errorf("spec read as %+v", s)
	}
	ch := s.Config.changes(s)
	if len(ch.Cmd) != 0 || ch.Cmd == nil {
		t.Errorf("cmd: [] must clear (non-nil, empty), got %#v", ch.Cmd)
	}
	if strings.Join(ch.Env, ",") != "A=1,B=2" || ch.ClearEnv {
		t.Errorf("env: %v clear=%v, want sorted A=1,B=2 merged", ch.Env, ch.ClearEnv)
	}
	if !ch.ClearLabels || ch.ClearPorts {
		t.Errorf("labels: {} must clear, ports [80/tcp] must not: %+v", ch)
	}
	if *ch.User != "0" || *ch.WorkingDir != "/" || *ch.StopSignal != "SIGTERM" || ch.Arch != "arm64" || ch.Variant != "v8" {
		t.Errorf("config changes: %+v", ch)
	}
	// An absent config key inherits.
	s2 := parse(t, dir, "image: oci:x\nlayers: [{name: a, type: packages, packages: [p]}]\n")
	ch2 := s2.Config.changes(s2)
	if ch2.Entrypoint != nil || ch2.Cmd != nil || ch2.Env != nil || ch2.ClearEnv || ch2.User != nil {
		t.Errorf("absent keys must inherit: %+v", ch2)
	}
}

func TestSpecErrors(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "rootfs/etc"), 0o755)
	cases := map[string]struct{ yaml, want string }{
		"unknown key":     {"image: oci:x\nlayerz: []\n", "field layerz not found"},
		"unknown type":    {"image: oci:x\nlayers: [{name: a, type: rpm, packages: [p]}]\n", `layer 'a': unknown layer type "rpm"`},
		"no type":         {"image: oci:x\nlayers: [{name: a, packages: [p]}]\n", "layer 'a': no type"},
		"duplicate":       {"image: oci:x\nlayers: [{name: a, type: packages, packages: [p]}, {name: a, type: packages, packages: [q]}]\n", "layer 'a': duplicate layer name"},
		"missing source":  {"image: oci:x\nlayers: [{name: d, type: directories, source: nowhere, paths: [/etc]}]\n", "layer 'd': source nowhere: does not exist"},
		"path not there":  {"image: oci:x\nlayers: [{name: d, type: files, source: rootfs, paths: [/etc/nope]}]\n", "layer 'd': path /etc/nope: not in source rootfs"},
		"relative path":   {"image: oci:x\nlayers: [{name: d, type: files, source: rootfs, paths: [etc]}]\n", `layer 'd': path "etc": want an absolute path`},
		"dotdot path":     {"image: oci:x\nlayers: [{name: d, type: files, source: rootfs, paths: [/etc/../..]}]\n", "not a clean path"},
		"host no dst":     {"image: oci:x\nlayers: [{name: h, type: host, copy: [rootfs]}]\n", `layer 'h': copy "rootfs": want SRC:DST`},
		"no packages":     {"image: oci:x\nlayers: [{name: p, type: packages}]\n", "layer 'p': no packages"},
		"bad name":        {"image: oci:x\nlayers: [{name: 'a b', type: packages, packages: [p]}]\n", `name "a b"`},
		"no image":        {"layers: [{name: a, type: packages, packages: [p]}]\n", "no output image"},
		"bad mode":        {"image: oci:x\nmode: double\nlayers: [{name: a, type: packages, packages: [p]}]\n", `mode "double"`},
		"bad compression": {"image: oci:x\ncompression: lz4\nlayers: [{name: a, type: packages, packages: [p]}]\n", `compression "lz4"`},
		"bad exclude":     {"image: oci:x\nexclude: [var/cache]\nlayers: [{name: a, type: packages, packages: [p]}]\n", "exclude"},
		"bad timeout":     {"image: oci:x\ninstall-timeout: soon\nlayers: [{name: a, type: packages, packages: [p]}]\n", "not a duration"},
		"no layers":       {"image: oci:x\n", "no layers"},
	}
	for name, c := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			s, err := Parse([]byte(c.yaml), "spec.yaml", dir)
			if err == nil {
				err = s.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			if !inputerr.Is(err) {
				t.Errorf("%v is not a bad-input error", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

func TestParseLayerFlag(t *testing.T) {
	l, err := ParseLayerFlag("base:packages:base-files+busybox", "")
	if err != nil || l.Name != "base" || l.Type != TypePackages || strings.Join(l.Packages, ",") != "base-files,busybox" {
		t.Errorf("packages: %+v %v", l, err)
	}
	l, err = ParseLayerFlag("app:directories:/usr/share/app+/opt/app", "/rootfs")
	if err != nil || l.Source != "/rootfs" || strings.Join(l.Paths, ",") != "/usr/share/app,/opt/app" {
		t.Errorf("directories: %+v %v", l, err)
	}
	l, err = ParseLayerFlag("extra:host:/host/a:/opt/a+/host/b:/opt/b", "")
	if err != nil || strings.Join(l.Copy, ",") != "/host/a:/opt/a,/host/b:/opt/b" {
		t.Errorf("host: %+v %v", l, err)
	}
	if _, err := ParseLayerFlag("app:files:/etc/x", ""); err == nil || !strings.Contains(err.Error(), "--rootfs") {
		t.Errorf("files without --rootfs: %v", err)
	}
	if _, err := ParseLayerFlag("justaname", ""); err == nil {
		t.Error("a layer without a type was accepted")
	}
}

// Keys chain: a changed input of one layer changes its key and every
// key above it, and nothing below; no absolute path enters a key.
func TestKeys(t *testing.T) {
	ctx := context.Background()
	dirA, dirB := t.TempDir(), t.TempDir()
	for _, d := range []string{dirA, dirB} {
		os.MkdirAll(filepath.Join(d, "rootfs/usr/share/app"), 0o755)
		os.WriteFile(filepath.Join(d, "rootfs/usr/share/app/a.txt"), []byte("a"), 0o644)
		os.Chtimes(filepath.Join(d, "rootfs/usr/share/app/a.txt"), time.Unix(1e9, 0), time.Unix(1e9, 0))
		os.Chtimes(filepath.Join(d, "rootfs/usr/share/app"), time.Unix(1e9, 0), time.Unix(1e9, 0))
	}
	spec := `image: oci:x
machine: m
versions: {bash: "5.2"}
layers:
  - {name: base, type: packages, packages: [busybox, base-files]}
  - {name: shell, type: packages, packages: [bash]}
  - {name: app, type: directories, source: rootfs, paths: [/usr/share/app]}
`
	keysOf := func(dir, yaml string) []string {
		s := parse(t, dir, yaml)
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
		k, err := newKeyer(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		parent := ""
		for _, l := range s.Layers {
			in, err := k.layer(ctx, parent, l)
			if err != nil {
				t.Fatal(err)
			}
			parent = in.key()
			keys = append(keys, parent)
		}
		return keys
	}
	base := keysOf(dirA, spec)
	if other := keysOf(dirB, spec); strings.Join(other, ",") != strings.Join(base, ",") {
		t.Errorf("the same spec in another directory has other keys: %v vs %v", other, base)
	}
	same := func(a, b []string, n int) bool { return strings.Join(a[:n], ",") == strings.Join(b[:n], ",") }
	bumped := keysOf(dirA, strings.Replace(spec, `bash: "5.2"`, `bash: "5.3"`, 1))
	if !same(bumped, base, 1) || bumped[1] == base[1] || bumped[2] == base[2] {
		t.Errorf("a version change in layer 2: keys %v, before %v", bumped, base)
	}
	reordered := keysOf(dirA, strings.Replace(spec, "[busybox, base-files]", "[base-files, busybox]", 1))
	if !same(reordered, base, 3) {
		t.Errorf("package order changed the keys")
	}
	if m := keysOf(dirA, strings.Replace(spec, "machine: m", "machine: n", 1)); m[0] == base[0] {
		t.Errorf("machine is not part of the key")
	}
	os.WriteFile(filepath.Join(dirA, "rootfs/usr/share/app/a.txt"), []byte("b"), 0o644)
	os.Chtimes(filepath.Join(dirA, "rootfs/usr/share/app/a.txt"), time.Unix(1e9, 0), time.Unix(1e9, 0))
	if c := keysOf(dirA, spec); !same(c, base, 2) || c[2] == base[2] {
		t.Errorf("content change of a directories layer: keys %v, before %v", c, base)
	}
}

func TestPkgdataVersions(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "pkgdata/runtime"), 0o755)
	os.WriteFile(filepath.Join(dir, "pkgdata/runtime/busybox"), []byte("PN: busybox\nPKGV:busybox: 1.36.1\nPKGR: r0\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "pkgdata/runtime/bash"), []byte("PKGV_bash: 5.2.15\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "pkgdata/runtime/zlib"), []byte("PKGV: 1.3\n"), 0o644)
	s := parse(t, dir, "image: oci:x\npkgdata: pkgdata\nversions: {zlib: '9.9'}\nlayers: [{name: a, type: packages, packages: [busybox, bash, zlib, nover]}]\n")
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	k, err := newKeyer(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	in, err := k.layer(context.Background(), "", s.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := in.summary(); got != "a:bash=5.2.15 busybox=1.36.1 nover=? zlib=9.9" {
		t.Errorf("summary %q", got)
	}
}

// A build on a base image takes the base's architecture unless the spec
// names one, and refuses a spec naming another.
func TestBasePlatform(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "up/etc"), 0o755)
	ref, err := oci.ParseReference("oci:" + filepath.Join(dir, "base") + ":arm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oci.Commit(context.Background(), oci.CommitOptions{Upper: filepath.Join(dir, "up"), Image: ref,
		Config: oci.ConfigChanges{Arch: "arm64", Variant: "v8"}}); err != nil {
		t.Fatal(err)
	}
	ca, err := cache.Open(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	spec := "image: oci:out\nbase: oci:base:arm\nlayers: [{name: a, type: packages, packages: [p]}]\n"
	s := parse(t, dir, spec)
	if _, err := Explain(context.Background(), s, ca, nil); err != nil {
		t.Fatalf("explain on an arm64 base: %v", err)
	}
	if s.Arch != "" {
		t.Errorf("Explain changed the caller's spec: arch %q", s.Arch)
	}
	s = parse(t, dir, "arch: amd64\n"+spec)
	_, err = Explain(context.Background(), s, ca, nil)
	if err == nil || !strings.Contains(err.Error(), "arch amd64 differs from the base image's arm64/v8") || !inputerr.Is(err) {
		t.Errorf("amd64 spec on an arm64 base: %v", err)
	}
	_, err = Build(context.Background(), Options{Spec: s, Cache: ca})
	if err == nil || !strings.Contains(err.Error(), "differs from the base image's") {
		t.Errorf("build of an amd64 spec on an arm64 base: %v", err)
	}
}
