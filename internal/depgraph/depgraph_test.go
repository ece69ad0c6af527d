package depgraph

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/layerfs/layerfs/"

// listed is what go list says of one package of the module.
type listed struct {
	ImportPath  string
	Dir         string
	GoFiles     []string
	TestGoFiles []string
	Imports     []string
}

func listModule(t *testing.T) []listed {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pkgs []listed
	dec := json.NewDecoder(out)
	for {
		var p listed
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		p.ImportPath = strings.TrimPrefix(p.ImportPath, module)
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found %d packages of the module", len(pkgs))
	}
	return pkgs
}

// floors says which of the module's packages each may import, by prefix:
// a package imports only from the floors below its own, so the graph
// flows one way. The first matching key applies.
var floors = []struct {
	pkg   string
	may   []string
	means string
}{
	{"cmd/", []string{"layers", "cache", "fs", "oci", "overlay", "internal/"}, "the CLI calls into everything"},
	{"layers", []string{"cache", "fs", "oci", "overlay", "internal/"}, "the build pipeline"},
	{"cache/remote", []string{"cache", "oci", "internal/"}, "the registry tier reaches registries through oci"},
	{"cache", []string{"overlay", "internal/"}, "the cache runs no builds and reads no images"},
	{"fs", []string{"overlay", "internal/"}, "fs knows nothing of OCI or the cache"},
	{"oci", []string{"oci/", "overlay", "internal/"}, "oci mounts nothing and knows no cache"},
	{"internal/hostile", []string{"overlay", "internal/"}, "a fixture of hostile layers, named by the markers it forges"},
	{"internal/", []string{"internal/"}, "helpers of every floor"},
	{"overlay", nil, "the layer-dir format imports nothing of ours"},
}

func allowed(pkg, imp string) (bool, string) {
	for _, f := range floors {
		if pkg != f.pkg && !strings.HasPrefix(pkg, f.pkg+"/") && !(strings.HasSuffix(f.pkg, "/") && strings.HasPrefix(pkg, f.pkg)) {
			continue
		}
		for _, m := range f.may {
			if imp == m || strings.HasPrefix(imp, strings.TrimSuffix(m, "/")+"/") {
				return true, f.means
			}
		}
		return false, f.means
	}
	return false, "a package no floor names: add it to floors"
}

func TestImportsFlowOneWay(t *testing.T) {
	for _, p := range listModule(t) {
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			imp = strings.TrimPrefix(imp, module)
			if ok, means := allowed(p.ImportPath, imp); !ok {
				t.Errorf("%s imports %s (%s)", p.ImportPath, imp, means)
			}
		}
	}
}

// The checker itself: edges that must be refused.
func TestFloorsRefuse(t *testing.T) {
	for _, e := range [][2]string{
		{"overlay", "internal/inputerr"}, {"fs", "oci"}, {"fs", "cache"}, {"oci", "fs"},
		{"oci/view", "layers"}, {"cache", "oci"}, {"layers", "cmd/layerfs"}, {"internal/ctxio", "overlay"},
	} {
		if ok, _ := allowed(e[0], e[1]); ok {
			t.Errorf("%s → %s allowed", e[0], e[1])
		}
	}
	for _, e := range [][2]string{{"oci", "oci/view"}, {"layers", "fs"}, {"cmd/layerfs", "layers"}, {"cache/remote", "oci"}} {
		if ok, _ := allowed(e[0], e[1]); !ok {
			t.Errorf("%s → %s refused", e[0], e[1])
		}
	}
}

// homes are rules written in one place: a string literal or a call that
// matches outside its home (non-test files; the fixtures of hostile
// layers and test trees forge markers on purpose) is a second copy.
var homes = []struct {
	rule    string
	home    string
	literal *regexp.Regexp // in string literals
	call    *regexp.Regexp // selector calls, as pkg.Func
}{
	{"overlay markers", "overlay", regexp.MustCompile(`\.wh\.|overlay\.opaque|override_stat`), nil},
	{"decompression", "internal/compress", nil, regexp.MustCompile(`^(gzip|pgzip|zstd|bzip2|xz|lz4)\.NewReader$`)},
}

var fixtures = []string{"internal/hostile", "internal/testutil"}

func TestRulesHaveOneHome(t *testing.T) {
	for _, p := range listModule(t) {
		fixture := false
		for _, f := range fixtures {
			fixture = fixture || p.ImportPath == f
		}
		for _, name := range p.GoFiles {
			file := filepath.Join(p.Dir, name)
			f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				for _, h := range homes {
					if p.ImportPath == h.home || strings.HasPrefix(p.ImportPath, h.home+"/") {
						continue
					}
					switch n := n.(type) {
					case *ast.BasicLit:
						if h.literal == nil || n.Kind != token.STRING || fixture {
							continue
						}
						s, err := strconv.Unquote(n.Value)
						if err == nil && h.literal.MatchString(s) && !isHelpText(f, n) {
							t.Errorf("%s: %s literal %s outside %s", file, h.rule, n.Value, h.home)
						}
					case *ast.SelectorExpr:
						if id, ok := n.X.(*ast.Ident); ok && h.call != nil && h.call.MatchString(id.Name+"."+n.Sel.Name) {
							t.Errorf("%s: %s.%s outside %s", file, id.Name, n.Sel.Name, h.home)
						}
					}
				}
				return true
			})
		}
	}
}

// isHelpText says whether lit is a struct tag (kong's help text names the
// markers it writes for a user to read).
func isHelpText(f *ast.File, lit *ast.BasicLit) bool {
	tag := false
	ast.Inspect(f, func(n ast.Node) bool {
		if fl, ok := n.(*ast.Field); ok && fl.Tag == lit {
			tag = true
		}
		return !tag
	})
	return tag
}

// skipsAllowed are the skips outside testutil's one rule, each a test of a
// case the machine is not in (never of a missing tool or feature).
var skipsAllowed = map[string]string{
	"internal/sandbox/run_test.go": "TestIsolateWithoutRootIsRefused tests the unprivileged case; a run as root is not it",
}

// TestOneSkipRule: tests skip only through testutil (Unavailable,
// RequireRoot, RequireTool), which fail instead when CI is set.
func TestOneSkipRule(t *testing.T) {
	for _, p := range listModule(t) {
		if p.ImportPath == "internal/testutil" {
			continue
		}
		for _, name := range p.TestGoFiles {
			file := filepath.Join(p.Dir, name)
			f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok || (sel.Sel.Name != "Skip" && sel.Sel.Name != "Skipf" && sel.Sel.Name != "SkipNow") {
					return true
				}
				if _, ok := skipsAllowed[filepath.Join(p.ImportPath, name)]; !ok {
					t.Errorf("%s: %s outside testutil (use testutil.Unavailable, which fails under CI)", file, sel.Sel.Name)
				}
				return true
			})
		}
	}
}
