package layers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/layerfs/layerfs/cache/remote"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci"
)

// SetOptions describe a build of several specs.
type SetOptions struct {
	Options
	// Jobs is how many specs build at once; 0 means 1.
	Jobs int
	// Tiers, if set, gives each spec its shared cache tiers (from its
	// own cache:), in place of Options.CacheFrom and CacheTo.
	Tiers func(*Spec) (from []*remote.Tier, to *remote.Tier, err error)
}

// SetResult is one spec's outcome in a set.
type SetResult struct {
	Spec   string  `json:"spec"`
	Result *Result `json:"result,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// specNode is one spec of a set and the specs whose images it reads.
type specNode struct {
	spec *Spec
	deps []int
}

// planSet orders a set of specs: a spec whose base or image layer names
// another spec's output image depends on it. A cycle, two specs writing
// one image, or a local image that no spec makes and that does not exist
// are errors, found before anything builds.
func planSet(specs []*Spec) ([]specNode, error) {
	out := map[string]int{}
	nodes := make([]specNode, len(specs))
	for i, s := range specs {
		if err := s.Validate(); err != nil {
			return nil, err
		}
		ref, _ := oci.ParseReference(s.Image)
		if ref.Tag == "" && ref.Transport != oci.TransportDocker && ref.Transport != oci.TransportDockerArchive {
			ref.Tag = "latest" // what a build writes an untagged output as
		}
		loc := refLocation(ref)
		if j, ok := out[loc]; ok {
			return nil, inputerr.New("specs %s and %s both write %s", specs[j].File, s.File, s.Image)
		}
		out[loc] = i
		nodes[i].spec = s
	}
	for i, s := range specs {
		reads := []string{s.Base}
		for _, l := range s.Layers {
			if l.Type == TypeImage {
				reads = append(reads, l.Ref)
			}
		}
		for _, r := range reads {
			if r == "" {
				continue
			}
			ref, _ := oci.ParseReference(r)
			j, made := out[refLocation(ref)]
			if !made && ref.Tag == "" {
				// An untagged local reference reads the only image there:
				// a spec that writes one tag there makes it.
				for k, s2 := range specs {
					o, _ := oci.ParseReference(s2.Image)
					if o.Transport == ref.Transport && filepath.Clean(o.Path) == filepath.Clean(ref.Path) && o.Repository == ref.Repository {
						j, made = k, true
					}
				}
			}
			switch {
			case made && j == i:
				return nil, inputerr.New("spec %s reads %s, which it writes itself", s.File, r)
			case made:
				nodes[i].deps = append(nodes[i].deps, j)
			case !exists(ref):
				return nil, inputerr.New("spec %s reads %s, which no spec of this build makes and which does not exist", s.File, r)
			}
		}
	}
	if cycle := findCycle(nodes); cycle != nil {
		var names []string
		for _, i := range cycle {
			names = append(names, specs[i].File)
		}
		return nil, inputerr.New("specs depend on each other in a cycle: %s", strings.Join(names, " -> "))
	}
	return nodes, nil
}

// refLocation names where a reference's image lives, tag included.
func refLocation(r oci.Reference) string {
	tag := r.Tag
	if tag == "" && r.Transport != oci.TransportDocker {
		tag = "\x00only"
	}
	if r.Transport == oci.TransportDocker {
		if r.Digest != "" {
			tag = "@" + r.Digest.String()
		} else if tag == "" {
			tag = "latest"
		}
		return "docker://" + r.Repository + ":" + tag
	}
	return string(r.Transport) + ":" + filepath.Clean(r.Path) + ":" + tag
}

// exists says whether a local image is there; registry images are taken
// to be (the build says if not).
func exists(r oci.Reference) bool {
	switch r.Transport {
	case oci.TransportDocker:
		return true
	case oci.TransportOCI:
		img, err := oci.OpenImage(r)
		if err != nil {
			// A multi-platform layout cannot be opened for this host's
			// platform perhaps, but it is there.
			_, serr := os.Stat(filepath.Join(r.Path, "index.json"))
			return serr == nil && r.Tag == ""
		}
		img.Close()
		return true
	}
	_, err := os.Stat(r.Path)
	return err == nil
}

// findCycle returns the specs of a dependency cycle, first repeated at
// the end, or nil.
func findCycle(nodes []specNode) []int {
	const (
		unseen = iota
		active
		done
	)
	state := make([]int, len(nodes))
	var stack []int
	var visit func(i int) []int
	visit = func(i int) []int {
		state[i] = active
		stack = append(stack, i)
		for _, j := range nodes[i].deps {
			switch state[j] {
			case active:
				for k, s := range stack {
					if s == j {
						return append(append([]int{}, stack[k:]...), j)
					}
				}
			case unseen:
				if c := visit(j); c != nil {
					return c
				}
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = done
		return nil
	}
	for i := range nodes {
		if state[i] == unseen {
			if c := visit(i); c != nil {
				return c
			}
		}
	}
	return nil
}

// BuildSet builds a set of specs, each when the specs it reads are
// built, up to Jobs at once, each on its own mounts, all through one
// cache. A failed spec fails those that read it; the others go on. With
// more than one spec, every log and output line is prefixed with the
// spec's name.
func BuildSet(ctx context.Context, specs []*Spec, opts SetOptions) ([]SetResult, error) {
	nodes, err := planSet(specs)
	if err != nil {
		return nil, err
	}
	jobs := max(opts.Jobs, 1)
	sem := make(chan struct{}, jobs)
	results := make([]SetResult, len(specs))
	done := make([]chan struct{}, len(specs))
	for i := range done {
		done[i] = make(chan struct{})
	}
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[i])
			results[i].Spec = n.spec.File
			for _, j := range n.deps {
				<-done[j]
				if results[j].Error != "" {
					results[i].Error = fmt.Sprintf("not built: %s, which it reads, failed", specs[j].File)
					return
				}
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				results[i].Error = ctx.Err().Error()
				return
			}
			defer func() { <-sem }()
			o := opts.Options
			o.Spec = n.spec
			if opts.Tiers != nil {
				var err error
				if o.CacheFrom, o.CacheTo, err = opts.Tiers(n.spec); err != nil {
					results[i].Error = err.Error()
					return
				}
			}
			var flush []func()
			if len(specs) > 1 {
				prefix := "[" + specName(n.spec) + "] "
				for _, w := range []*io.Writer{&o.Log, &o.Output} {
					if *w != nil {
						pw := newPrefixWriter(*w, prefix)
						flush = append(flush, pw.flush)
						*w = pw
					}
				}
				if warn := o.Warn; warn != nil {
					o.Warn = func(msg string) { warn(prefix + msg) }
				}
			}
			res, err := Build(ctx, o)
			for _, f := range flush {
				f()
			}
			if err != nil {
				results[i].Error = err.Error()
				return
			}
			results[i].Result = res
		}()
	}
	wg.Wait()
	var failed []string
	for _, r := range results {
		if r.Error != "" {
			failed = append(failed, r.Spec+": "+r.Error)
		}
	}
	switch {
	case len(failed) == 0:
		return results, nil
	case len(specs) == 1:
		return results, errors.New(strings.TrimPrefix(failed[0], specs[0].File+": "))
	}
	return results, fmt.Errorf("%d of %d specs failed: %s", len(failed), len(specs), strings.Join(failed, "; "))
}

// specName is the spec's file name without its extension.
func specName(s *Spec) string {
	b := filepath.Base(s.File)
	return strings.TrimSuffix(strings.TrimSuffix(b, ".yaml"), ".yml")
}

// prefixWriter prefixes every line written to w, whole lines at a time,
// so that the lines of parallel builds do not mix within a line.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    bytes.Buffer
}

func newPrefixWriter(w io.Writer, prefix string) *prefixWriter {
	return &prefixWriter{w: w, prefix: prefix}
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf.Write(b)
	for {
		i := bytes.IndexByte(p.buf.Bytes(), '\n')
		if i < 0 {
			break
		}
		line := p.buf.Next(i + 1)
		if _, err := p.w.Write(append([]byte(p.prefix), line...)); err != nil {
			return len(b), err
		}
	}
	return len(b), nil
}

func (p *prefixWriter) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.buf.Len() > 0 {
		p.w.Write(append(append([]byte(p.prefix), p.buf.Bytes()...), '\n'))
		p.buf.Reset()
	}
}
