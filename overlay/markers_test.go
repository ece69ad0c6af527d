package overlay

import (
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// TestMarkersInTheMergedView: every marker variant that DESIGN.md says
// is read hides or overrides what it should, whether the upper or a
// lower above the base holds it, and no marker is itself visible: not
// as a name, not as a whiteout device, not as an xattr.
func TestMarkersInTheMergedView(t *testing.T) {
	testutil.RequireRoot(t)
	base := func(tr testutil.Tree) { tr.File("f", "base").File("dir/x", "X").File("keep", "K") }
	all := []string{"dir d 755", `dir/x f 644 "X"`, `f f 644 "base"`, `keep f 644 "K"`}
	without := func(names ...string) []string {
		return slices.DeleteFunc(slices.Clone(all), func(s string) bool {
			for _, n := range names {
				if strings.HasPrefix(s, n+" ") {
					return true
				}
			}
			return false
		})
	}
	opaqueDir := []string{"dir d 755", `dir/new f 644 "N"`, `f f 644 "base"`, `keep f 644 "K"`}
	cases := []struct {
		name  string
		mark  func(testutil.Tree)
		want  []string
		xattr [2]string // a marker xattr the merged object must not show
	}{
		{"whiteout device", func(tr testutil.Tree) { tr.Whiteout("f").Whiteout("dir") },
			without("f", "dir", "dir/x"), [2]string{}},
		{".wh.NAME file", func(tr testutil.Tree) { tr.File(".wh.f", "").File(".wh.dir", "") },
			without("f", "dir", "dir/x"), [2]string{}},
		{"whiteout device in a dir", func(tr testutil.Tree) { tr.Whiteout("dir/x") },
			without("dir/x"), [2]string{}},
		{".wh.NAME in a dir", func(tr testutil.Tree) { tr.File("dir/.wh.x", "") },
			without("dir/x"), [2]string{}},
		{"a real name beside its .wh. file wins", func(tr testutil.Tree) { tr.File("f", "top").File(".wh.f", "") },
			[]string{"dir d 755", `dir/x f 644 "X"`, `f f 644 "top"`, `keep f 644 "K"`}, [2]string{}},
		{"trusted.overlay.opaque", func(tr testutil.Tree) { tr.File("dir/new", "N").Xattr("dir", "trusted.overlay.opaque", "y") },
			opaqueDir, [2]string{"dir", "trusted.overlay.opaque"}},
		{"user.overlay.opaque", func(tr testutil.Tree) { tr.File("dir/new", "N").Xattr("dir", "user.overlay.opaque", "y") },
			opaqueDir, [2]string{"dir", "user.overlay.opaque"}},
		{"user.fuseoverlayfs.opaque", func(tr testutil.Tree) { tr.File("dir/new", "N").Xattr("dir", "user.fuseoverlayfs.opaque", "y") },
			opaqueDir, [2]string{"dir", "user.fuseoverlayfs.opaque"}},
		{".wh..wh..opq", func(tr testutil.Tree) { tr.File("dir/new", "N").File("dir/.wh..wh..opq", "") },
			opaqueDir, [2]string{}},
		{"an opaque xattr that is not y merges", func(tr testutil.Tree) { tr.File("dir/new", "N").Xattr("dir", "trusted.overlay.opaque", "n") },
			[]string{"dir d 755", `dir/new f 644 "N"`, `dir/x f 644 "X"`, `f f 644 "base"`, `keep f 644 "K"`},
			[2]string{"dir", "trusted.overlay.opaque"}},
		{"user.containers.override_stat", func(tr testutil.Tree) { tr.File("f", "top").Xattr("f", XattrOverrideStat, "5:6:4755:file") },
			[]string{"dir d 755", `dir/x f 644 "X"`, `f f 4755 "top" 5:6`, `keep f 644 "K"`},
			[2]string{"f", XattrOverrideStat}},
		{"user.fuseoverlayfs.override_stat", func(tr testutil.Tree) { tr.File("f", "top").Xattr("f", "user.fuseoverlayfs.override_stat", "7:8:0600") },
			[]string{"dir d 755", `dir/x f 644 "X"`, `f f 600 "top" 7:8`, `keep f 644 "K"`},
			[2]string{"f", "user.fuseoverlayfs.override_stat"}},
		{"both override names: today's wins", func(tr testutil.Tree) {
			tr.File("f", "top").Xattr("f", "user.fuseoverlayfs.override_stat", "7:8:0600").Xattr("f", XattrOverrideStat, "5:6:0640:file")
		},
			[]string{"dir d 755", `dir/x f 644 "X"`, `f f 640 "top" 5:6`, `keep f 644 "K"`},
			[2]string{"f", XattrOverrideStat}},
		{"override_stat of a device kept as a plain file", func(tr testutil.Tree) { tr.File("f", "").Xattr("f", XattrOverrideStat, "0:5:0620:char-4-1") },
			[]string{"dir d 755", `dir/x f 644 "X"`, "f c 620 4:1 0:5", `keep f 644 "K"`},
			[2]string{"f", XattrOverrideStat}},
		{"override_stat of a merged dir", func(tr testutil.Tree) { tr.Dir("dir").Xattr("dir", XattrOverrideStat, "1:2:0700:dir") },
			[]string{"dir d 700 1:2", `dir/x f 644 "X"`, `f f 644 "base"`, `keep f 644 "K"`},
			[2]string{"dir", XattrOverrideStat}},
	}
	for _, where := range []string{"upper", "lower"} {
		for _, c := range cases {
			t.Run(where+"/"+c.name, func(t *testing.T) {
				var l layers
				if where == "upper" {
					l = newLayers(t, 1)
					c.mark(l.upper)
				} else {
					l = newLayers(t, 2)
					c.mark(l.lowers[1])
				}
				base(l.lowers[0])
				u := l.open(t, UnionOptions{})
				if got := mergedView(t, u); !slices.Equal(got, c.want) {
					t.Errorf("merged view: %s", diffLines(got, c.want))
				}
				if p, name := c.xattr[0], c.xattr[1]; name != "" {
					if v, err := u.GetXattr(p, name); err != unix.ENODATA {
						t.Errorf("GetXattr(%s, %s) = %q, %v; want ENODATA", p, name, v, err)
					}
				}
			})
		}
	}
}
