package oci

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/oci/view"
	"github.com/layerfs/layerfs/overlay"
)

// rootfsBase is the lower of the rootfs scenarios: a little of everything
// a change can touch, hardlinks included (a rootfs copy keeps them, and
// an untouched group must stay out of the layer).
func rootfsBase(l testutil.Tree) {
	l.File("etc/passwd", "root:x:0:0").File("etc/hosts", "127.0.0.1").
		File("etc/conf.d/a", "a").File("etc/conf.d/b", "b").
		File("bin/sh", "sh").File("bin/ls", "ls").Dir("usr/bin").
		File("usr/share/doc/readme", "doc").Xattr("usr/share/doc/readme", "user.k", "v").
		File("var/lib/db/x", "x").File("var/lib/db/sub/y", "y").
		File("opt/f", "f").
		File("home/u/file", "u").Chown("home/u/file", 1000, 1000).Chown("home/u", 1000, 1000).
		File("lib/libfoo.so.1", "foo").Link("lib/libfoo-link", "lib/libfoo.so.1").
		File("srv/one", "same").File("srv/two", "same").
		Symlink("lib64", "lib")
}

type rootfsScenario struct {
	name string
	// change runs once in a kernel overlay mount over the base and once in
	// a copy of the base: the same changes, made two ways.
	change func(t *testing.T, root testutil.Tree)
	// want, when set, is the --deletions layer.
	want []string
	// layerDirsOnly: the change is visible only to a lower that knows
	// inodes (a Stack); an image listing cannot tell and leaves it out.
	layerDirsOnly bool
}

var rootfsScenarios = []rootfsScenario{
	{name: "unchanged", change: func(*testing.T, testutil.Tree) {}, want: []string{}},
	{name: "add", change: func(t *testing.T, r testutil.Tree) {
		r.File("etc/new", "new").File("srv/www/index.html", "<html>").Symlink("srv/www/link", "index.html")
	}, want: []string{
		"5 etc/ 0755 0:0",
		"0 etc/new 0644 0:0 \"new\"",
		"5 srv/ 0755 0:0",
		"5 srv/www/ 0755 0:0",
		"0 srv/www/index.html 0644 0:0 \"<html>\"",
		"2 srv/www/link 0777 0:0 -> index.html",
	}},
	{name: "modify-content", change: func(t *testing.T, r testutil.Tree) {
		r.File("etc/hosts", "127.0.0.2").File("etc/passwd", "root:x:0:0:longer")
	}, want: []string{
		"5 etc/ 0755 0:0",
		"0 etc/hosts 0644 0:0 \"127.0.0.2\"",
		"0 etc/passwd 0644 0:0 \"root:x:0:0:longer\"",
	}},
	{name: "mode-only", change: func(t *testing.T, r testutil.Tree) {
		r.Chmod("etc/passwd", 0o600).Chmod("var/lib", 0o700)
	}},
	{name: "owner-only", change: func(t *testing.T, r testutil.Tree) {
		r.Chown("etc/hosts", 5, 6).Chown("home/u", 0, 0)
	}},
	{name: "xattr-only", change: func(t *testing.T, r testutil.Tree) {
		r.Xattr("etc/passwd", "user.x", "1").Xattr("usr/share/doc/readme", "user.k", "w")
	}, want: []string{
		"5 etc/ 0755 0:0",
		"0 etc/passwd 0644 0:0 \"root:x:0:0\" [user.x=1]",
		"5 usr/ 0755 0:0",
		"5 usr/share/ 0755 0:0",
		"5 usr/share/doc/ 0755 0:0",
		"0 usr/share/doc/readme 0644 0:0 \"doc\" [user.k=w]",
	}},
	{name: "delete-file", change: func(t *testing.T, r testutil.Tree) {
		removeAll(t, r, "etc/conf.d/a")
		removeAll(t, r, "lib/libfoo-link")
	}, want: []string{
		"5 etc/ 0755 0:0",
		"5 etc/conf.d/ 0755 0:0",
		"0 etc/conf.d/.wh.a 0000 0:0 \"\"",
		"5 lib/ 0755 0:0",
		"0 lib/.wh.libfoo-link 0000 0:0 \"\"",
	}},
	{name: "delete-dir-tree", change: func(t *testing.T, r testutil.Tree) {
		removeAll(t, r, "var/lib/db")
	}, want: []string{
		"5 var/ 0755 0:0",
		"5 var/lib/ 0755 0:0",
		"0 var/lib/.wh.db 0000 0:0 \"\"",
	}},
	{name: "merged-usr", change: func(t *testing.T, r testutil.Tree) {
		rename(t, r, "bin/sh", "usr/bin/sh")
		rename(t, r, "bin/ls", "usr/bin/ls")
		removeAll(t, r, "bin")
		r.Symlink("bin", "usr/bin")
	}, want: []string{
		"2 bin 0777 0:0 -> usr/bin",
		"5 usr/ 0755 0:0",
		"5 usr/bin/ 0755 0:0",
		"0 usr/bin/ls 0644 0:0 \"ls\"",
		"0 usr/bin/sh 0644 0:0 \"sh\"",
	}},
	{name: "file-to-dir", change: func(t *testing.T, r testutil.Tree) {
		removeAll(t, r, "opt/f")
		r.File("opt/f/inside", "i")
	}, want: []string{
		"5 opt/ 0755 0:0",
		"5 opt/f/ 0755 0:0",
		"0 opt/f/inside 0644 0:0 \"i\"",
	}},
	{name: "dir-to-file", change: func(t *testing.T, r testutil.Tree) {
		removeAll(t, r, "var/lib/db")
		r.File("var/lib/db", "now a file")
	}, want: []string{
		"5 var/ 0755 0:0",
		"5 var/lib/ 0755 0:0",
		"0 var/lib/db 0644 0:0 \"now a file\"",
	}},
	{name: "dir-recreated", change: func(t *testing.T, r testutil.Tree) {
		removeAll(t, r, "var/lib/db")
		r.File("var/lib/db/x", "x").File("var/lib/db/z", "z")
	}},
	{name: "relink", layerDirsOnly: true, change: func(t *testing.T, r testutil.Tree) {
		removeAll(t, r, "srv/two")
		r.Link("srv/two", "srv/one")
	}, want: []string{
		"5 srv/ 0755 0:0",
		"0 srv/one 0644 0:0 \"same\"",
		"1 srv/two 0644 0:0 -> srv/one",
	}},
}

// The rootfs mode's promise: a full rootfs committed with deletions gives
// byte for byte the layer of an overlay upper that made the same changes,
// with the lower given as layer dirs or listed from an image.
func TestRootfsEqualsOverlayUpper(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "cp")
	for _, sc := range rootfsScenarios {
		t.Run(sc.name, func(t *testing.T) {
			d := dirs(t, "lower")
			lower := d[0]
			rootfsBase(lower)
			upper := overlayUpper(t, lower.Root, func(r testutil.Tree) { sc.change(t, r) })
			rootfs := filepath.Join(t.TempDir(), "rootfs")
			copyTreeA(t, lower.Root, rootfs)
			sc.change(t, testutil.Tree{T: t, Root: rootfs})

			lowers := map[string]overlay.Lower{"layer dirs": overlay.NewStack(lower.Root)}
			if !sc.layerDirsOnly {
				lowers["image listing"] = listing(t, lower.Root)
			}
			for what, lo := range lowers {
				fromUpper := layerEntries(t, upper, lo, epochOpts())
				opts := epochOpts()
				opts.Rootfs, opts.Deletions = true, true
				fromRootfs := layerEntries(t, rootfs, lo, opts)
				if !slices.Equal(fromUpper, fromRootfs) {
					t.Errorf("lower from %s: rootfs layer differs from the overlay upper's:\n upper:\n  %s\nrootfs:\n  %s",
						what, strings.Join(fromUpper, "\n  "), strings.Join(fromRootfs, "\n  "))
				}
				if sc.want != nil {
					assertEntries(t, fromRootfs, sc.want...)
				} else if len(fromRootfs) == 0 {
					t.Errorf("lower from %s: empty layer for a change", what)
				}
				if a, b := diffID(t, upper, lo, epochOpts()), diffID(t, rootfs, lo, opts); a != b {
					t.Errorf("lower from %s: diff_id %s from the upper, %s from the rootfs", what, a, b)
				}

				// Without deletions: the same additions and changes, and
				// not one whiteout.
				opts.Deletions = false
				additive := layerEntries(t, rootfs, lo, opts)
				for _, e := range additive {
					if strings.Contains(e, overlay.WhiteoutPrefix) {
						t.Errorf("lower from %s: whiteout %q without deletions", what, e)
					}
					if !slices.Contains(fromRootfs, e) {
						t.Errorf("lower from %s: %q without deletions but not with them", what, e)
					}
				}
				for _, e := range fromRootfs {
					if !strings.Contains(e, overlay.WhiteoutPrefix) && !strings.HasPrefix(e, "5 ") && !slices.Contains(additive, e) {
						t.Errorf("lower from %s: %q missing without deletions", what, e)
					}
				}
			}
		})
	}
}

func TestRootfsWithoutDeletionsKeepsWhatItLacks(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "lower", "rootfs")
	d[0].File("etc/a", "a").File("etc/b", "b").File("var/x", "x")
	// Only the new and changed files, as a package's staging dir has them.
	d[1].File("etc/a", "A").File("etc/c", "c")
	opts := epochOpts()
	opts.Rootfs = true
	got := layerEntries(t, d[1].Root, overlay.NewStack(d[0].Root), opts)
	assertEntries(t, got,
		"5 etc/ 0755 0:0",
		"0 etc/a 0644 0:0 \"A\"",
		"0 etc/c 0644 0:0 \"c\"",
	)
	opts.Deletions = true
	got = layerEntries(t, d[1].Root, overlay.NewStack(d[0].Root), opts)
	assertEntries(t, got,
		"0 .wh.var 0000 0:0 \"\"",
		"5 etc/ 0755 0:0",
		"0 etc/.wh.b 0000 0:0 \"\"",
		"0 etc/a 0644 0:0 \"A\"",
		"0 etc/c 0644 0:0 \"c\"",
	)
}

// A hardlink group of the rootfs goes in whole or not at all.
func TestRootfsHardlinkGroups(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "cp")
	d := dirs(t, "lower")
	d[0].File("a/same", "s").Link("b/same2", "a/same").File("a/old", "old").Link("b/old2", "a/old")
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	copyTreeA(t, d[0].Root, rootfs)
	r := testutil.Tree{T: t, Root: rootfs}
	// Through the inode: both names see it, so both must be in the layer.
	if err := os.WriteFile(filepath.Join(rootfs, "b/old2"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.File("c/fresh", "f").Link("c/fresh2", "c/fresh")
	opts := epochOpts()
	opts.Rootfs, opts.Deletions = true, true
	for what, lo := range map[string]overlay.Lower{"layer dirs": overlay.NewStack(d[0].Root), "image listing": listing(t, d[0].Root)} {
		got := layerEntries(t, rootfs, lo, opts)
		if !slices.Equal(got, []string{
			"5 a/ 0755 0:0",
			"0 a/old 0644 0:0 \"new\"",
			"5 b/ 0755 0:0",
			"1 b/old2 0644 0:0 -> a/old",
			"5 c/ 0755 0:0",
			"0 c/fresh 0644 0:0 \"f\"",
			"1 c/fresh2 0644 0:0 -> c/fresh",
		}) {
			t.Errorf("lower from %s: got\n  %s", what, strings.Join(got, "\n  "))
		}
	}
}

func TestRootfsRefusesOverlayMarkers(t *testing.T) {
	testutil.RequireRoot(t)
	cases := []struct {
		name  string
		build func(r testutil.Tree)
		path  string // named in the error, relative to the rootfs
	}{
		{"whiteout device", func(r testutil.Tree) { r.File("etc/a", "a").Whiteout("etc/gone") }, "etc/gone"},
		{"wh file", func(r testutil.Tree) { r.File("etc/.wh.gone", "") }, "etc/.wh.gone"},
		{"wh file beside its name", func(r testutil.Tree) { r.File("etc/a", "a").File("etc/.wh.a", "") }, "etc/.wh.a"},
		{"opaque file marker", func(r testutil.Tree) { r.File("etc/.wh..wh..opq", "") }, "etc/.wh..wh..opq"},
		{"opaque xattr", func(r testutil.Tree) { r.Opaque("etc").File("etc/a", "a") }, "etc"},
		{"user opaque xattr", func(r testutil.Tree) { r.Dir("etc").Xattr("etc", "user.overlay.opaque", "y") }, "etc"},
		{"opaque root", func(r testutil.Tree) { r.File("a", "a").Xattr(".", "trusted.overlay.opaque", "y") }, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := dirs(t, "lower", "rootfs")
			d[0].File("etc/gone", "g").File("etc/a", "a")
			c.build(d[1])
			for _, deletions := range []bool{false, true} {
				opts := epochOpts()
				opts.Rootfs, opts.Deletions = true, deletions
				_, err := layer.Write(context.Background(), &bytes.Buffer{}, d[1].Root, overlay.NewStack(d[0].Root), opts)
				want := filepath.Join(d[1].Root, c.path)
				if err == nil || !inputerr.Is(err) || !strings.Contains(err.Error(), want+":") || !strings.Contains(err.Error(), "rootfs") {
					t.Errorf("deletions=%v: got %v, want a bad-input error naming %s", deletions, err, want)
				}
			}
			// The same dir is a fine upper.
			if _, err := layer.Write(context.Background(), &bytes.Buffer{}, d[1].Root, overlay.NewStack(d[0].Root), epochOpts()); err != nil {
				t.Errorf("as an upper: %v", err)
			}
		})
	}
}

func TestDeletionsNeedRootfs(t *testing.T) {
	d := dirs(t, "upper")
	_, err := layer.Write(context.Background(), &bytes.Buffer{}, d[0].Root, nil, layer.Options{Deletions: true})
	if err == nil || !inputerr.Is(err) || !strings.Contains(err.Error(), "rootfs") {
		t.Errorf("got %v, want a bad-input error", err)
	}
}

// overlayUpper makes change in a kernel overlay mount over lower and
// returns the upper it leaves.
func overlayUpper(t *testing.T, lower string, change func(testutil.Tree)) string {
	t.Helper()
	base := t.TempDir()
	var upper, work, merged string
	for _, p := range []*string{&upper, &work, &merged} {
		d, err := os.MkdirTemp(base, "")
		if err != nil {
			t.Fatal(err)
		}
		*p = d
	}
	// As the integration suite mounts it: no redirects or metacopy,
	// which a layer cannot express.
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work + ",redirect_dir=off,metacopy=off,index=off"
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENODEV) {
			testutil.Unavailable(t, "cannot mount overlayfs here: %v", err)
		}
		t.Fatalf("mount overlay (%s): %v", opts, err)
	}
	defer func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Fatalf("unmount %s: %v", merged, err)
		}
	}()
	change(testutil.Tree{T: t, Root: merged})
	return upper
}

// listing is the lower view of an image made of dir as its one layer.
func listing(t *testing.T, dir string) *view.Listing {
	t.Helper()
	ref, err := ParseReference("oci:" + filepath.Join(t.TempDir(), "img") + ":t")
	if err != nil {
		t.Fatal(err)
	}
	e := testEpoch
	if _, err := Commit(context.Background(), CommitOptions{Upper: dir, Image: ref, Layer: layer.Options{SourceDateEpoch: &e}}); err != nil {
		t.Fatal(err)
	}
	img, err := OpenImage(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	l, err := view.List(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func diffID(t *testing.T, dir string, lower overlay.Lower, opts layer.Options) string {
	t.Helper()
	l, err := layer.Write(context.Background(), &bytes.Buffer{}, dir, lower, opts)
	if err != nil {
		t.Fatal(err)
	}
	return l.DiffID.String()
}

// copyTreeA copies src to dst as cp -a does: hardlinks, owners, modes,
// xattrs and mtimes kept.
func copyTreeA(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v: %s", src, dst, err, out)
	}
}

func removeAll(t *testing.T, r testutil.Tree, p string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(r.Root, p)); err != nil {
		t.Fatal(err)
	}
}

func rename(t *testing.T, r testutil.Tree, from, to string) {
	t.Helper()
	if err := os.Rename(filepath.Join(r.Root, from), filepath.Join(r.Root, to)); err != nil {
		t.Fatal(err)
	}
}
