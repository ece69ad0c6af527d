package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/oci/view"
)

type inspectCmd struct {
	Ref     string `arg:"" name:"REF" help:"Image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG] or docker://HOST/REPO[:TAG|@DIGEST]."`
	JSON    bool   `name:"json" help:"Print one JSON object (stable; see README)."`
	NoCount bool   `help:"Do not read the layers: no entry counts, and their diff_ids are not checked (for a registry, nothing but the manifest and config is pulled)."`

	viewImageFlags `embed:""`
}

// inspectJSON is the --json output. Its fields are documented in README;
// add fields, never rename or drop them.
type inspectJSON struct {
	Reference    string            `json:"reference"`
	Digest       string            `json:"digest"`
	MediaType    string            `json:"media_type"`
	Size         int64             `json:"size"`
	ConfigDigest string            `json:"config_digest"`
	OS           string            `json:"os"`
	Architecture string            `json:"architecture"`
	Variant      string            `json:"variant"`
	Created      *time.Time        `json:"created"`
	Author       string            `json:"author"`
	Config       inspectConfig     `json:"config"`
	Annotations  map[string]string `json:"annotations"`
	Layers       []inspectLayer    `json:"layers"`
}

type inspectConfig struct {
	Entrypoint   []string          `json:"entrypoint"`
	Cmd          []string          `json:"cmd"`
	Env          []string          `json:"env"`
	Labels       map[string]string `json:"labels"`
	ExposedPorts []string          `json:"exposed_ports"`
	Volumes      []string          `json:"volumes"`
	User         string            `json:"user"`
	WorkingDir   string            `json:"working_dir"`
	StopSignal   string            `json:"stop_signal"`
}

type inspectLayer struct {
	Digest    string     `json:"digest"`
	DiffID    string     `json:"diff_id"`
	Size      int64      `json:"size"`
	MediaType string     `json:"media_type"`
	Created   *time.Time `json:"created"`
	CreatedBy string     `json:"created_by"`
	Comment   string     `json:"comment"`
	// Counts are absent with --no-count.
	Entries   *int `json:"entries,omitempty"`
	Files     *int `json:"files,omitempty"`
	Whiteouts *int `json:"whiteouts,omitempty"`
}

func (c *inspectCmd) Run(e *env) error {
	img, err := c.open(e, c.Ref)
	if err != nil {
		return err
	}
	defer img.Close()
	var counts []view.LayerCount
	if !c.NoCount {
		if counts, err = view.CountLayers(e.ctx, img); err != nil {
			return err
		}
	}
	out := describeImage(img, counts)
	w := bufio.NewWriter(e.stdout)
	if c.JSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		writeInspectText(w, &out)
	}
	return w.Flush()
}

func describeImage(img *oci.Image, counts []view.LayerCount) inspectJSON {
	cfg := img.Config
	ic := cfg.Config
	out := inspectJSON{
		Reference:    img.Ref.String(),
		Digest:       img.ManifestDesc.Digest.String(),
		MediaType:    img.ManifestDesc.MediaType,
		Size:         img.ManifestDesc.Size,
		ConfigDigest: img.Manifest.Config.Digest.String(),
		OS:           cfg.OS,
		Architecture: cfg.Architecture,
		Variant:      cfg.Variant,
		Created:      utc(cfg.Created),
		Author:       cfg.Author,
		Config: inspectConfig{
			Entrypoint:   orEmpty(ic.Entrypoint),
			Cmd:          orEmpty(ic.Cmd),
			Env:          orEmpty(ic.Env),
			Labels:       ic.Labels,
			ExposedPorts: slices.Sorted(maps.Keys(ic.ExposedPorts)),
			Volumes:      slices.Sorted(maps.Keys(ic.Volumes)),
			User:         ic.User,
			WorkingDir:   ic.WorkingDir,
			StopSignal:   ic.StopSignal,
		},
		Annotations: img.Manifest.Annotations,
		Layers:      []inspectLayer{},
	}
	if out.MediaType == "" {
		out.MediaType = img.Manifest.MediaType
	}
	if out.Config.Labels == nil {
		out.Config.Labels = map[string]string{}
	}
	out.Config.ExposedPorts = orEmpty(out.Config.ExposedPorts)
	out.Config.Volumes = orEmpty(out.Config.Volumes)
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	// History has an entry per layer plus empty_layer entries for config
	// steps: skipping those lines it up with the layers.
	var hist []v1.History
	for _, h := range cfg.History {
		if !h.EmptyLayer {
			hist = append(hist, h)
		}
	}
	for i, l := range img.Manifest.Layers {
		il := inspectLayer{Digest: l.Digest.String(), Size: l.Size, MediaType: l.MediaType}
		if i < len(cfg.RootFS.DiffIDs) {
			il.DiffID = cfg.RootFS.DiffIDs[i].String()
		}
		if i < len(hist) {
			il.Created, il.CreatedBy, il.Comment = utc(hist[i].Created), hist[i].CreatedBy, hist[i].Comment
		}
		if counts != nil {
			il.Entries, il.Files, il.Whiteouts = &counts[i].Entries, &counts[i].Files, &counts[i].Whiteouts
		}
		out.Layers = append(out.Layers, il)
	}
	return out
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func writeInspectText(w io.Writer, o *inspectJSON) {
	kv := func(k, v string) { fmt.Fprintf(w, "%-13s %s\n", k, v) }
	list := func(k string, vs []string) {
		if len(vs) == 0 {
			kv(k, "")
		}
		for i, v := range vs {
			if i > 0 {
				k = ""
			}
			kv(k, v)
		}
	}
	words := func(vs []string) string {
		if len(vs) == 0 {
			return ""
		}
		b, _ := json.Marshal(vs) // exec form, quoted as in a Dockerfile
		return string(b)
	}
	kv("Image", o.Reference)
	kv("Digest", o.Digest)
	kv("MediaType", o.MediaType)
	platform := o.OS + "/" + o.Architecture
	if o.Variant != "" {
		platform += "/" + o.Variant
	}
	kv("Platform", platform)
	if o.Created != nil {
		kv("Created", o.Created.Format(time.RFC3339))
	} else {
		kv("Created", "")
	}
	if o.Author != "" {
		kv("Author", o.Author)
	}
	kv("Entrypoint", words(o.Config.Entrypoint))
	kv("Cmd", words(o.Config.Cmd))
	list("Env", o.Config.Env)
	var labels []string
	for _, k := range slices.Sorted(maps.Keys(o.Config.Labels)) {
		labels = append(labels, k+"="+o.Config.Labels[k])
	}
	list("Labels", labels)
	kv("ExposedPorts", strings.Join(o.Config.ExposedPorts, " "))
	if len(o.Config.Volumes) > 0 {
		kv("Volumes", strings.Join(o.Config.Volumes, " "))
	}
	kv("User", o.Config.User)
	kv("WorkingDir", o.Config.WorkingDir)
	kv("StopSignal", o.Config.StopSignal)
	fmt.Fprintf(w, "Layers        %d\n", len(o.Layers))
	for i, l := range o.Layers {
		counts := ""
		if l.Entries != nil {
			counts = fmt.Sprintf("  %d entries (%d files, %d whiteouts)", *l.Entries, *l.Files, *l.Whiteouts)
		}
		fmt.Fprintf(w, "  %d  %s  %d bytes%s\n", i+1, l.Digest, l.Size, counts)
		fmt.Fprintf(w, "     diff_id     %s\n", l.DiffID)
		fmt.Fprintf(w, "     media_type  %s\n", l.MediaType)
		if l.Created != nil {
			fmt.Fprintf(w, "     created     %s\n", l.Created.Format(time.RFC3339))
		}
		if l.CreatedBy != "" {
			fmt.Fprintf(w, "     created_by  %s\n", l.CreatedBy)
		}
		if l.Comment != "" {
			fmt.Fprintf(w, "     comment     %s\n", l.Comment)
		}
	}
}
