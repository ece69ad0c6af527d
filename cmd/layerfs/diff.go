package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/layerfs/layerfs/oci/view"
)

type diffCmd struct {
	Ref1  string `arg:"" name:"REF1" help:"The image to compare from."`
	Ref2  string `arg:"" name:"REF2" help:"The image to compare to."`
	JSON  bool   `name:"json" help:"Print {\"added\": [PATH...], \"removed\": [PATH...], \"changed\": [{\"path\", \"fields\"}...]}."`
	Mtime bool   `help:"Count a different mtime as a change (without it, an mtime alone is not one)."`

	viewImageFlags `embed:""`
}

// diffJSON is the --json output (documented in README).
type diffJSON struct {
	Added   []string      `json:"added"`
	Removed []string      `json:"removed"`
	Changed []diffChanged `json:"changed"`
}

type diffChanged struct {
	Path   string   `json:"path"`
	Fields []string `json:"fields"`
}

func (c *diffCmd) Run(e *env) error {
	var views [2]*view.View
	for i, s := range []string{c.Ref1, c.Ref2} {
		img, err := c.open(e, s)
		if err != nil {
			return err
		}
		defer img.Close()
		// One after the other: each view already reads its layers in
		// parallel, and a second image's reads would only compete.
		if views[i], err = view.Open(e.ctx, img, view.Options{Digests: true}); err != nil {
			return err
		}
	}
	changes, err := view.Diff(e.ctx, views[0], views[1], view.DiffOptions{Mtime: c.Mtime})
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(e.stdout, 64<<10)
	if c.JSON {
		out := diffJSON{Added: []string{}, Removed: []string{}, Changed: []diffChanged{}}
		for _, ch := range changes {
			switch ch.Kind {
			case view.ChangeAdded:
				out.Added = append(out.Added, ch.Path)
			case view.ChangeRemoved:
				out.Removed = append(out.Removed, ch.Path)
			case view.ChangeChanged:
				out.Changed = append(out.Changed, diffChanged{Path: ch.Path, Fields: ch.Fields})
			}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
		return w.Flush()
	}
	// The letters of docker diff: A added, D deleted, C changed.
	for _, ch := range changes {
		switch ch.Kind {
		case view.ChangeAdded:
			fmt.Fprintf(w, "A %s\n", ch.Path)
		case view.ChangeRemoved:
			fmt.Fprintf(w, "D %s\n", ch.Path)
		case view.ChangeChanged:
			fmt.Fprintf(w, "C %s (%s)\n", ch.Path, strings.Join(ch.Fields, ", "))
		}
	}
	return w.Flush()
}
