package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/oci/view"
	"github.com/layerfs/layerfs/overlay"
)

// viewImageFlags are the flags of the verbs that read an image's merged
// view or metadata (inspect, ls, cat, diff).
type viewImageFlags struct {
	Platform string `placeholder:"OS/ARCH[/VARIANT]" help:"Image to read from a multi-platform index (default: this machine's). armhf and armel mean arm/v7 and arm/v6."`
	Strict   bool   `help:"Refuse a registry pull by tag without a digest instead of warning."`
	Insecure bool   `help:"Allow plain HTTP to a registry."`
}

// open parses and opens the image s names.
func (f *viewImageFlags) open(e *env, s string) (*oci.Image, error) {
	ref, err := oci.ParseReference(s)
	if err != nil {
		return nil, err
	}
	opts, err := f.openOptions(e.warn)
	if err != nil {
		return nil, err
	}
	return oci.Open(e.ctx, ref, opts)
}

// openOptions are the flags' options for opening an image.
func (f *viewImageFlags) openOptions(warn func(string)) (oci.OpenOptions, error) {
	opts := oci.OpenOptions{Strict: f.Strict, Insecure: f.Insecure, Warn: warn}
	if f.Platform != "" {
		p, err := oci.ParsePlatform(f.Platform)
		if err != nil {
			return opts, err
		}
		opts.Platform = p
	}
	return opts, nil
}

type lsCmd struct {
	Ref       string `arg:"" name:"REF" help:"Image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG] or docker://HOST/REPO[:TAG|@DIGEST]."`
	Path      string `arg:"" name:"PATH" optional:"" default:"/" help:"Path in the image (default /). A directory lists its entries; a trailing slash follows a symlink to one."`
	Long      bool   `short:"l" help:"Long format: type and mode, links, uid:gid, size, mtime (UTC), the layer (1 = base) the path comes from, and a symlink's target."`
	Recursive bool   `short:"R" help:"List everything beneath PATH."`
	JSON      bool   `name:"json" help:"Print a JSON array of entries (the long format's fields; see README)."`
	Digests   bool   `help:"Hash each regular file's content: its sha256 digest joins the --json output and ends each -l line."`

	viewImageFlags `embed:""`
}

func (c *lsCmd) Run(e *env) error {
	img, err := c.open(e, c.Ref)
	if err != nil {
		return err
	}
	defer img.Close()
	v, err := view.Open(e.ctx, img, view.Options{Digests: c.Digests})
	if err != nil {
		return err
	}
	// Like ls: the last component is listed as it is, unless a trailing
	// slash asks for what a symlink points to.
	top, err := v.Stat(c.Path, strings.HasSuffix(c.Path, "/") && c.Path != "/")
	if err != nil {
		return err
	}
	var entries []view.Entry
	switch {
	case top.Meta.Type != overlay.TypeDir:
		entries = []view.Entry{top}
	case c.Recursive:
		err = v.Walk(e.ctx, top.Path, func(ve view.Entry) error {
			if ve.Path != top.Path {
				entries = append(entries, ve)
			}
			return nil
		})
	default:
		entries, err = v.ReadDir(top.Path)
	}
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(e.stdout, 64<<10)
	switch {
	case c.JSON:
		err = writeEntriesJSON(w, entries)
	case c.Long:
		writeEntriesLong(w, entries)
	default:
		for _, ve := range entries {
			fmt.Fprintln(w, ve.Path)
		}
	}
	if err != nil {
		return err
	}
	return w.Flush()
}

// lsEntry is one element of `ls --json` (documented in README).
type lsEntry struct {
	Path   string            `json:"path"`
	Type   string            `json:"type"`
	Mode   string            `json:"mode"`
	UID    uint32            `json:"uid"`
	GID    uint32            `json:"gid"`
	Size   *int64            `json:"size,omitempty"`
	Mtime  string            `json:"mtime"`
	Link   *string           `json:"link,omitempty"`
	Major  *uint32           `json:"major,omitempty"`
	Minor  *uint32           `json:"minor,omitempty"`
	Xattrs map[string][]byte `json:"xattrs,omitempty"`
	Layer  int               `json:"layer"`
	Links  []string          `json:"links,omitempty"`
	Digest string            `json:"digest,omitempty"`
}

func jsonEntry(ve view.Entry) lsEntry {
	m := ve.Meta
	j := lsEntry{
		Path:   ve.Path,
		Type:   typeWord(m.Type),
		Mode:   fmt.Sprintf("%04o", m.Mode),
		UID:    m.UID,
		GID:    m.GID,
		Mtime:  m.Mtime.UTC().Format(time.RFC3339Nano),
		Layer:  ve.Layer + 1,
		Links:  ve.Links,
		Digest: ve.Digest.String(),
	}
	switch m.Type {
	case overlay.TypeReg:
		j.Size = &m.Size
	case overlay.TypeSymlink:
		j.Link = &m.Link
	case overlay.TypeChar, overlay.TypeBlock:
		j.Major, j.Minor = &m.Major, &m.Minor
	}
	if len(m.Xattrs) > 0 {
		j.Xattrs = map[string][]byte{}
		for k, x := range m.Xattrs {
			j.Xattrs[k] = []byte(x)
		}
	}
	return j
}

// writeEntriesJSON streams one JSON array, an element a line, so that
// a listing of a whole image is never held twice in memory.
func writeEntriesJSON(w io.Writer, entries []view.Entry) error {
	if len(entries) == 0 {
		_, err := io.WriteString(w, "[]\n")
		return err
	}
	sep := "[\n"
	for _, ve := range entries {
		b, err := json.Marshal(jsonEntry(ve))
		if err != nil {
			return fmt.Errorf("%s: %w", ve.Path, err)
		}
		io.WriteString(w, sep)
		w.Write(b)
		sep = ",\n"
	}
	_, err := io.WriteString(w, "\n]\n")
	return err
}

// typeWord names a type in --json output; the words of integration's
// tree package and of find -printf %y's long forms.
func typeWord(t overlay.Type) string {
	switch t {
	case overlay.TypeReg:
		return "file"
	case overlay.TypeDir:
		return "dir"
	case overlay.TypeSymlink:
		return "symlink"
	case overlay.TypeChar:
		return "char"
	case overlay.TypeBlock:
		return "block"
	case overlay.TypeFifo:
		return "fifo"
	case overlay.TypeSocket:
		return "socket"
	}
	return "unknown"
}

// modeString renders type and mode as ls -l does (drwxr-xr-x, with s,
// S, t and T for setuid, setgid and sticky).
func modeString(t overlay.Type, mode uint32) string {
	b := []byte("?rwxrwxrwx")
	switch t {
	case overlay.TypeReg:
		b[0] = '-'
	case overlay.TypeDir:
		b[0] = 'd'
	case overlay.TypeSymlink:
		b[0] = 'l'
	case overlay.TypeChar:
		b[0] = 'c'
	case overlay.TypeBlock:
		b[0] = 'b'
	case overlay.TypeFifo:
		b[0] = 'p'
	case overlay.TypeSocket:
		b[0] = 's'
	}
	for i := range 9 {
		if mode&(1<<(8-i)) == 0 {
			b[i+1] = '-'
		}
	}
	special := func(bit uint32, pos int, set, unset byte) {
		if mode&bit == 0 {
			return
		}
		if b[pos] == '-' {
			b[pos] = unset
		} else {
			b[pos] = set
		}
	}
	special(0o4000, 3, 's', 'S')
	special(0o2000, 6, 's', 'S')
	special(0o1000, 9, 't', 'T')
	return string(b)
}

// writeEntriesLong prints ls -l style lines with aligned columns:
// MODE NLINK UID:GID SIZE MTIME LAYER PATH [-> TARGET].
func writeEntriesLong(w io.Writer, entries []view.Entry) {
	type row struct{ mode, nlink, owner, size, mtime, layer, name string }
	rows := make([]row, len(entries))
	var wn, wo, ws, wl int
	for i, ve := range entries {
		m := ve.Meta
		r := row{
			mode:  modeString(m.Type, m.Mode),
			nlink: strconv.Itoa(ve.Nlink),
			owner: fmt.Sprintf("%d:%d", m.UID, m.GID),
			mtime: m.Mtime.UTC().Format("2006-01-02 15:04:05"),
			layer: "L" + strconv.Itoa(ve.Layer+1),
			name:  ve.Path,
		}
		switch m.Type {
		case overlay.TypeChar, overlay.TypeBlock:
			r.size = fmt.Sprintf("%d, %d", m.Major, m.Minor)
		case overlay.TypeReg:
			r.size = strconv.FormatInt(m.Size, 10)
		case overlay.TypeSymlink:
			r.size = strconv.Itoa(len(m.Link)) // as lstat reports it
		default:
			r.size = "0"
		}
		if m.Type == overlay.TypeSymlink {
			r.name += " -> " + m.Link
		}
		if ve.Digest != "" {
			r.name += " " + ve.Digest.String()
		}
		wn, wo, ws, wl = max(wn, len(r.nlink)), max(wo, len(r.owner)), max(ws, len(r.size)), max(wl, len(r.layer))
		rows[i] = r
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%s %*s %-*s %*s %s %-*s %s\n", r.mode, wn, r.nlink, wo, r.owner, ws, r.size, r.mtime, wl, r.layer, r.name)
	}
}
