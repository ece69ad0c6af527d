package layers

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// graphSpec parses a spec file name in dir: image out, base (may be ""),
// and image layers embedding each of embeds.
func graphSpec(t *testing.T, dir, name, out, base string, embeds ...string) *Spec {
	t.Helper()
	var b strings.Builder
	b.WriteString("image: " + out + "\n")
	if base != "" {
		b.WriteString("base: " + base + "\n")
	}
	b.WriteString("layers:\n  - {name: pk, type: packages, packages: [p]}\n")
	for i, e := range embeds {
		b.WriteString("  - {name: img" + string(rune('0'+i)) + ", type: image, ref: '" + e + "', path: /images/i" + string(rune('0'+i)) + "}\n")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := Parse([]byte(b.String()), name, dir)
	if err != nil {
		t.Fatalf("parse %s: %v\n%s", name, err, b.String())
	}
	return s
}

// depsOf returns each spec's dependencies by file name.
func depsOf(nodes []specNode) map[string][]string {
	m := map[string][]string{}
	for _, n := range nodes {
		var ds []string
		for _, d := range n.deps {
			ds = append(ds, nodes[d].spec.File)
		}
		slices.Sort(ds)
		m[n.spec.File] = slices.Compact(ds)
	}
	return m
}

// topoOK says whether order (spec files) builds every spec after those
// it depends on.
func topoOK(order []string, deps map[string][]string) bool {
	pos := map[string]int{}
	for i, s := range order {
		pos[s] = i
	}
	for s, ds := range deps {
		for _, d := range ds {
			if pos[d] >= pos[s] {
				return false
			}
		}
	}
	return true
}

func TestGraphPlanOrder(t *testing.T) {
	dir := t.TempDir()
	// The outer spec is listed first: the order of the command line does
	// not matter. It embeds inner1 and builds on base; inner2 builds on
	// base too; inner1 reads nothing.
	outer := graphSpec(t, filepath.Join(dir, "outer"), "outer.yaml", "oci:out:v1", "oci:../shared/base:b1", "oci:../inner1/out:v1", "oci-archive:"+dir+"/inner2.tar:v2")
	inner1 := graphSpec(t, filepath.Join(dir, "inner1"), "inner1.yaml", "oci:out:v1", "")
	inner2 := graphSpec(t, filepath.Join(dir, "inner2"), "inner2.yaml", "oci-archive:../inner2.tar:v2", "oci:"+dir+"/shared/base:b1")
	base := graphSpec(t, filepath.Join(dir, "shared"), "base.yaml", "oci:base/:b1", "")
	specs := []*Spec{outer, inner1, inner2, base}
	nodes, err := planSet(specs)
	if err != nil {
		t.Fatalf("planSet: %v", err)
	}
	deps := depsOf(nodes)
	want := map[string][]string{
		"outer.yaml":  {"base.yaml", "inner1.yaml", "inner2.yaml"},
		"inner1.yaml": nil,
		"inner2.yaml": {"base.yaml"},
		"base.yaml":   nil,
	}
	for f, w := range want {
		if !slices.Equal(deps[f], w) {
			t.Errorf("%s depends on %q, want %q (relative and absolute spellings of one path are one image)", f, deps[f], w)
		}
	}
	if !topoOK([]string{"inner1.yaml", "base.yaml", "inner2.yaml", "outer.yaml"}, deps) || topoOK([]string{"outer.yaml", "inner1.yaml", "base.yaml", "inner2.yaml"}, deps) {
		t.Errorf("dependencies %v do not order the specs", deps)
	}
}

func TestGraphUntaggedRef(t *testing.T) {
	dir := t.TempDir()
	// An untagged reference reads the only image of a layout: the spec
	// that writes a tag there makes it.
	prod := graphSpec(t, dir, "prod.yaml", "oci:"+dir+"/layout:v3", "")
	cons := graphSpec(t, dir, "cons.yaml", "oci:"+dir+"/cons:x", "oci:"+dir+"/layout")
	emb := graphSpec(t, dir, "emb.yaml", "oci:"+dir+"/emb:x", "", "oci:"+dir+"/layout")
	nodes, err := planSet([]*Spec{cons, emb, prod})
	if err != nil {
		t.Fatalf("planSet: %v", err)
	}
	deps := depsOf(nodes)
	if !slices.Equal(deps["cons.yaml"], []string{"prod.yaml"}) || !slices.Equal(deps["emb.yaml"], []string{"prod.yaml"}) {
		t.Errorf("untagged reads of prod's layout: deps %v, want both on prod.yaml", deps)
	}
	// Spelt with a trailing slash (or any unclean absolute path), an
	// untagged read is still of that layout, as a tagged one is.
	for _, spelling := range []string{dir + "/layout/", dir + "/./layout"} {
		slash := graphSpec(t, dir, "slash.yaml", "oci:"+dir+"/slash:x", "", "oci:"+spelling)
		if nodes, err = planSet([]*Spec{slash, prod}); err != nil {
			t.Errorf("untagged read of oci:%s where prod.yaml writes oci:%s/layout:v3: %v", spelling, dir, err)
		} else if d := depsOf(nodes); !slices.Equal(d["slash.yaml"], []string{"prod.yaml"}) {
			t.Errorf("untagged read of oci:%s: deps %v, want prod.yaml", spelling, d)
		}
		tagged := graphSpec(t, dir, "tagged.yaml", "oci:"+dir+"/tagged:x", "", "oci:"+spelling+":v3")
		if nodes, err = planSet([]*Spec{tagged, prod}); err != nil {
			t.Errorf("tagged read of oci:%s:v3: %v", spelling, err)
		} else if d := depsOf(nodes); !slices.Equal(d["tagged.yaml"], []string{"prod.yaml"}) {
			t.Errorf("tagged read of oci:%s:v3: deps %v, want prod.yaml", spelling, d)
		}
	}
	// A tag the producer does not write is not its image.
	other := graphSpec(t, dir, "other.yaml", "oci:"+dir+"/other:x", "oci:"+dir+"/layout:v4")
	_, err = planSet([]*Spec{prod, other})
	if err == nil || !strings.Contains(err.Error(), "other.yaml") || !strings.Contains(err.Error(), "layout:v4") {
		t.Errorf("a read of tag v4 where a spec writes v3: %v, want the missing-producer error", err)
	}
	// Registry references: no tag is latest.
	reg := graphSpec(t, dir, "reg.yaml", "docker://registry.example.com/team/base:latest", "")
	regCons := graphSpec(t, dir, "regcons.yaml", "oci:"+dir+"/rc:x", "docker://registry.example.com/team/base")
	if nodes, err = planSet([]*Spec{regCons, reg}); err != nil {
		t.Fatalf("planSet: %v", err)
	}
	if d := depsOf(nodes); !slices.Equal(d["regcons.yaml"], []string{"reg.yaml"}) {
		t.Errorf("docker://.../base reads docker://.../base:latest: deps %v", d)
	}
}

// An image that no spec makes but that exists is read as it is.
func TestGraphExistingImage(t *testing.T) {
	img := imageOfTars(t, map[string]string{"etc/x": "x"})
	dir := t.TempDir()
	s := graphSpec(t, dir, "a.yaml", "oci:"+dir+"/out:x", img.Ref.String(), img.Ref.String())
	nodes, err := planSet([]*Spec{s, graphSpec(t, dir, "b.yaml", "oci:"+dir+"/b:x", "")})
	if err != nil {
		t.Fatalf("planSet: %v", err)
	}
	if d := depsOf(nodes); len(d["a.yaml"]) != 0 {
		t.Errorf("a reads an existing image: deps %v, want none", d)
	}
}

func checkGraphErr(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: accepted", what)
		return
	}
	if !inputerr.Is(err) {
		t.Errorf("%s: %q is not bad input (exit 2)", what, err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("%s: %q is not one line", what, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q lacks %q", what, err, w)
		}
	}
}

func TestGraphCycle(t *testing.T) {
	dir := t.TempDir()
	a := graphSpec(t, dir, "a.yaml", "oci:"+dir+"/a:1", "oci:"+dir+"/b:1")
	b := graphSpec(t, dir, "b.yaml", "oci:"+dir+"/b:1", "", "oci:"+dir+"/a:1")
	free := graphSpec(t, dir, "free.yaml", "oci:"+dir+"/free:1", "")
	_, err := planSet([]*Spec{free, a, b})
	checkGraphErr(t, "two-spec cycle", err, "cycle", "a.yaml", "b.yaml")
	if err != nil && strings.Contains(err.Error(), "free.yaml") {
		t.Errorf("the cycle error %q names free.yaml, which is not in it", err)
	}
	// Three specs.
	x := graphSpec(t, dir, "x.yaml", "oci:"+dir+"/x:1", "oci:"+dir+"/z:1")
	y := graphSpec(t, dir, "y.yaml", "oci:"+dir+"/y:1", "oci:"+dir+"/x:1")
	z := graphSpec(t, dir, "z.yaml", "oci:"+dir+"/z:1", "", "oci:"+dir+"/y:1")
	_, err = planSet([]*Spec{x, y, z})
	checkGraphErr(t, "three-spec cycle", err, "cycle", "x.yaml", "y.yaml", "z.yaml")
	// A spec reading what it writes.
	self := graphSpec(t, dir, "self.yaml", "oci:"+dir+"/self:1", "oci:"+dir+"/self:1")
	_, err = planSet([]*Spec{self, free})
	checkGraphErr(t, "self reference", err, "self.yaml")

	// BuildSet refuses before it builds anything: there is no cache to
	// build with here, and nothing is logged.
	var log bytes.Buffer
	res, err := BuildSet(context.Background(), []*Spec{free, a, b}, SetOptions{Options: Options{Log: &log, Output: &log}, Jobs: 2})
	checkGraphErr(t, "BuildSet of a cycle", err, "cycle", "a.yaml", "b.yaml")
	if res != nil || log.Len() > 0 {
		t.Errorf("BuildSet of a cycle: results %v, log %q", res, log.String())
	}
}

func TestGraphMissingProducer(t *testing.T) {
	dir := t.TempDir()
	ok := graphSpec(t, dir, "ok.yaml", "oci:"+dir+"/ok:1", "")
	for _, c := range []struct{ what, base, embed string }{
		{"base", "oci:" + dir + "/nowhere:1", ""},
		{"image layer", "", "oci:" + dir + "/nowhere:1"},
		{"archive", "", "oci-archive:" + dir + "/nowhere.tar"},
	} {
		var embeds []string
		if c.embed != "" {
			embeds = append(embeds, c.embed)
		}
		bad := graphSpec(t, dir, "bad.yaml", "oci:"+dir+"/bad:1", c.base, embeds...)
		_, err := planSet([]*Spec{ok, bad})
		checkGraphErr(t, c.what+" from no spec", err, "bad.yaml", "nowhere", "no spec")
		var log bytes.Buffer
		res, err := BuildSet(context.Background(), []*Spec{ok, bad}, SetOptions{Options: Options{Log: &log}, Jobs: 2})
		if err == nil || res != nil || log.Len() > 0 {
			t.Errorf("BuildSet with %s from no spec: %v, results %v, log %q", c.what, err, res, log.String())
		}
	}
}

func TestGraphTwoWriters(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ a, b string }{
		{"oci:" + dir + "/same:1", "oci:" + dir + "/same:1"},
		{"oci:" + dir + "/same:1", "oci:" + dir + "/sub/../same/:1"},
		{"docker://registry.example.com/x/y", "docker://registry.example.com/x/y:latest"},
	} {
		a := graphSpec(t, dir, "one.yaml", c.a, "")
		b := graphSpec(t, dir, "two.yaml", c.b, "")
		_, err := planSet([]*Spec{a, b})
		checkGraphErr(t, c.a+" and "+c.b, err, "one.yaml", "two.yaml")
	}
	// Two tags of one layout are two images.
	a := graphSpec(t, dir, "one.yaml", "oci:"+dir+"/same:1", "")
	b := graphSpec(t, dir, "two.yaml", "oci:"+dir+"/same:2", "")
	if _, err := planSet([]*Spec{a, b}); err != nil {
		t.Errorf("two tags of one layout: %v", err)
	}
	// A bad spec in the set is its own error, before any planning.
	bad := &Spec{File: "bad.yaml", Image: "oci:" + dir + "/bad:1"}
	if _, err := planSet([]*Spec{a, bad}); err == nil || !strings.Contains(err.Error(), "bad.yaml") {
		t.Errorf("a spec without layers in the set: %v", err)
	}
}

func TestGraphSpecName(t *testing.T) {
	for file, want := range map[string]string{"a/b/inner1.yaml": "inner1", "x.yml": "x", "/abs/outer": "outer", "(environment)": "(environment)"} {
		if got := specName(&Spec{File: file}); got != want {
			t.Errorf("specName(%q) = %q, want %q", file, got, want)
		}
	}
	// Lines are prefixed whole; a last partial line is flushed with a
	// newline.
	var out bytes.Buffer
	pw := newPrefixWriter(&out, "[x] ")
	pw.Write([]byte("one\ntw"))
	pw.Write([]byte("o\nthr"))
	pw.flush()
	if got := out.String(); got != "[x] one\n[x] two\n[x] thr\n" {
		t.Errorf("prefixed output %q", got)
	}
}

// An untagged output is written as latest: a spec reading :latest waits
// for it, and two specs writing oci:out and oci:out:latest are one image.
func TestGraphDefaultTag(t *testing.T) {
	dir := t.TempDir()
	a := graphSpec(t, dir, "a.yaml", "oci:out", "")
	b := graphSpec(t, dir, "b.yaml", "oci:b", "oci:out:latest")
	nodes, err := planSet([]*Spec{a, b})
	if err != nil {
		t.Fatalf("planSet: %v", err)
	}
	if deps := depsOf(nodes); !slices.Equal(deps["b.yaml"], []string{"a.yaml"}) {
		t.Errorf("b reads oci:out:latest, which a writes untagged: deps %v", deps)
	}
	c := graphSpec(t, dir, "c.yaml", "oci:out:latest", "")
	_, err = planSet([]*Spec{a, c})
	checkGraphErr(t, "oci:out and oci:out:latest", err, "a.yaml", "c.yaml", "both write")
}
