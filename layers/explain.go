package layers

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/oci"
)

// Explanation says, for one layer, whether the cache holds it and, for a
// miss, which inputs differ from the closest entry of the same name.
type Explanation struct {
	Name string `json:"name"`
	Key  string `json:"key"`
	Hit  bool   `json:"hit"`
	// Closest is the entry of that name that differs in the fewest inputs.
	Closest string   `json:"closest,omitempty"`
	Changes []Change `json:"changes,omitempty"`
}

// Change is one input that differs from the closest entry.
type Change struct {
	Input string `json:"input"`
	Was   string `json:"was"`
	Now   string `json:"now"`
}

func (c Change) String() string {
	if c.Input == "parent" {
		return "parent changed (a layer below differs)"
	}
	return fmt.Sprintf("%s: %q -> %q", c.Input, c.Was, c.Now)
}

// Explain computes every layer's key as a build would, without building,
// and compares it with the cache. A miss makes every layer above it miss
// too, since its key chains the parent's.
func Explain(ctx context.Context, s *Spec, c *cache.Cache, epoch *time.Time) ([]Explanation, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	entries, err := c.Entries()
	if err != nil {
		return nil, err
	}
	parent := ""
	if s.Base != "" {
		ref, err := oci.ParseReference(s.Base)
		if err != nil {
			return nil, err
		}
		img, err := oci.Open(ctx, ref, s.openOptions(false, false, nil))
		if err != nil {
			return nil, err
		}
		parent = img.ManifestDesc.Digest.String()
		spec := *s
		s = &spec
		err = s.adoptPlatform(img)
		img.Close()
		if err != nil {
			return nil, err
		}
	}
	keys, err := newKeyer(s, epoch)
	if err != nil {
		return nil, err
	}
	var all []inputs
	if s.mode() == ModeSingle {
		in := keys.common(parent, Layer{Name: ModeSingle, Type: ModeSingle})
		for _, l := range s.Layers {
			p, err := keys.layer(ctx, "", l)
			if err != nil {
				return nil, err
			}
			in.Parts = append(in.Parts, p)
		}
		all = append(all, in)
	} else {
		for _, l := range s.Layers {
			in, err := keys.layer(ctx, parent, l)
			if err != nil {
				return nil, err
			}
			all = append(all, in)
			parent = in.key()
		}
	}
	var out []Explanation
	for _, in := range all {
		key := in.key()
		ex := Explanation{Name: in.Name, Key: key}
		now := in.fields()
		best := -1
		for _, e := range entries {
			if e.Info.Name != in.Name || e.Info.Type == "base" {
				continue
			}
			if e.Info.Key == key {
				ex.Hit, ex.Changes, ex.Closest = true, nil, ""
				break
			}
			var ch []Change
			names := map[string]bool{}
			for k := range now {
				names[k] = true
			}
			for k := range e.Info.Inputs {
				names[k] = true
			}
			for _, k := range slices.Sorted(maps.Keys(names)) {
				if now[k] != e.Info.Inputs[k] {
					ch = append(ch, Change{Input: k, Was: e.Info.Inputs[k], Now: now[k]})
				}
			}
			if best < 0 || len(ch) < best {
				best, ex.Changes, ex.Closest = len(ch), ch, e.Info.Key
			}
		}
		out = append(out, ex)
	}
	return out, nil
}

// Line is the explanation as one line of text.
func (x Explanation) Line() string {
	switch {
	case x.Hit:
		return fmt.Sprintf("layer '%s' (%s): hit", x.Name, x.Key[:16])
	case x.Closest == "":
		return fmt.Sprintf("layer '%s' (%s): miss: no entry of this layer in the cache", x.Name, x.Key[:16])
	}
	var parts []string
	for _, c := range x.Changes {
		parts = append(parts, c.String())
	}
	return fmt.Sprintf("layer '%s' (%s): miss: closest entry %s differs in %s", x.Name, x.Key[:16], x.Closest[:16], strings.Join(parts, "; "))
}
