package layers

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/overlay"
)

// TarRules versions the layer tar rules (DESIGN.md): a change to what
// `commit` emits for the same upper changes it, and so every key.
const TarRules = "1"

// ApplyRules versions what unpack.Apply makes of a base-image layer; with
// whether it ran unprivileged (which records owners and devices in
// xattrs instead), it is part of a base layer's key.
const ApplyRules = "1"

// RootlessOwners versions how unprivileged builds keep owners, which
// only their keys (base layers' too) carry. "squash-1": unpack.Apply records
// every entry's owner; mounts record every chown; a layer maps what the
// builder owns on disk without a record to root (layer.Options
// SquashOwner); copying layers copy the owners sources record.
const RootlessOwners = "squash-1"

// rootlessOwners is RootlessOwners when this process builds unprivileged.
func rootlessOwners() string {
	if os.Geteuid() != 0 {
		return RootlessOwners
	}
	return ""
}

// squashOwner is the owner an unprivileged build maps to root: its own.
func squashOwner() *overlay.Owner {
	if os.Geteuid() == 0 {
		return nil
	}
	return &overlay.Owner{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
}

// baseKey is the key of a base-image layer's entry.
func baseKey(diffID digest.Digest) string {
	in := fmt.Appendf(nil, "layerfs base layer\x00%s\x00apply=%s\x00rootless=%t", diffID, ApplyRules, os.Geteuid() != 0)
	if o := rootlessOwners(); o != "" {
		in = fmt.Appendf(in, "\x00owners=%s", o)
	}
	sum := sha256.Sum256(in)
	return hex.EncodeToString(sum[:])
}

func defaultArch() string { return runtime.GOARCH }

// inputs is everything a layer's content depends on. Its canonical JSON,
// hashed, is the layer's key. No absolute host path enters it, so that
// every host computes the same key for the same inputs.
type inputs struct {
	Parent   string            `json:"parent"`
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Packages []string          `json:"packages,omitempty"`
	Versions map[string]string `json:"versions,omitempty"`
	Install  string            `json:"install,omitempty"`
	Paths    []string          `json:"paths,omitempty"`
	Content  string            `json:"content,omitempty"`
	Machine  string            `json:"machine"`
	// Tune is Yocto's TUNE_PKGARCH, which the class keys on too.
	Tune        string   `json:"tune_pkgarch,omitempty"`
	Arch        string   `json:"arch"`
	Variant     string   `json:"variant,omitempty"`
	Compression string   `json:"compression"`
	Mode        string   `json:"mode"`
	Exclude     []string `json:"exclude,omitempty"`
	Epoch       string   `json:"source_date_epoch,omitempty"`
	TarRules    string   `json:"tar_rules"`
	// Rootless: the layers below were made without privileges (owners
	// recorded in xattrs), and so is this one.
	Rootless bool `json:"rootless,omitempty"`
	// Owners is RootlessOwners in an unprivileged build.
	Owners string `json:"owners,omitempty"`
	// Parts are the layers folded into one by single mode.
	Parts []inputs `json:"parts,omitempty"`
	// Replace: the copy replaces what the layers below hold.
	Replace bool `json:"replace,omitempty"`
	// Embed is an image layer's image.
	Embed *embedInputs `json:"embed,omitempty"`
}

func (in *inputs) key() string { return cache.KeyOf(in.canonical()) }

// canonical is the JSON the key hashes: struct fields in order, map keys
// sorted, no spaces.
func (in *inputs) canonical() []byte {
	data, err := json.Marshal(in)
	if err != nil {
		panic(err) // plain strings and maps always marshal
	}
	return data
}

// fields lists the inputs by name, as cache entries record them and
// `cache explain` compares them.
func (in *inputs) fields() map[string]string {
	f := map[string]string{
		"parent": in.Parent, "name": in.Name, "type": in.Type,
		"install": in.Install, "paths": strings.Join(in.Paths, " "), "content": in.Content,
		"machine": in.Machine, "arch": in.Arch, "variant": in.Variant,
		"compression": in.Compression, "mode": in.Mode, "exclude": strings.Join(in.Exclude, " "),
		"source_date_epoch": in.Epoch, "tar_rules": in.TarRules, "rootless": strconv.FormatBool(in.Rootless),
	}
	var pkgs []string
	for _, p := range in.Packages {
		pkgs = append(pkgs, p+"="+in.Versions[p])
	}
	f["packages"] = strings.Join(pkgs, " ")
	if in.Owners != "" {
		f["owners"] = in.Owners
	}
	if in.Embed != nil {
		f["embed"] = in.Embed.Format + " " + in.Embed.Manifest.String() + " tag " + in.Embed.Tag
	}
	for _, p := range in.Parts {
		pf := p.fields()
		for k, v := range pf {
			if k != "parent" && k != "machine" && k != "arch" && k != "variant" && k != "compression" && k != "mode" && k != "exclude" && k != "source_date_epoch" && k != "tar_rules" && k != "owners" {
				f[p.Name+"."+k] = v
			}
		}
	}
	return f
}

// summary is what the Yocto class prints for a miss:
// "base:busybox=1.36.1 base-files=3.0".
func (in *inputs) summary() string {
	if len(in.Parts) > 0 {
		var parts []string
		for _, p := range in.Parts {
			parts = append(parts, p.summary())
		}
		return strings.Join(parts, "; ")
	}
	if in.Type == TypePackages {
		var pkgs []string
		for _, p := range in.Packages {
			v := in.Versions[p]
			if v == "" {
				v = "?"
			}
			pkgs = append(pkgs, p+"="+v)
		}
		return in.Name + ":" + strings.Join(pkgs, " ")
	}
	return in.Name + ":" + in.Type + "=" + strings.Join(in.Paths, " ")
}

// keyer computes the inputs of a spec's layers.
type keyer struct {
	spec     *Spec
	epoch    *time.Time
	squash   *overlay.Owner    // see squashOwner
	versions map[string]string // pkgdata, then the spec's versions:
	// open opens an image layer's image.
	open func(ctx context.Context, l Layer) (*oci.Image, error)
	// embedded holds the manifest digest each image layer's key took,
	// by layer name.
	embedded map[string]digest.Digest
}

func newKeyer(s *Spec, epoch *time.Time) (*keyer, error) {
	k := &keyer{spec: s, epoch: epoch, squash: squashOwner(), versions: map[string]string{}, embedded: map[string]digest.Digest{}}
	k.open = func(ctx context.Context, l Layer) (*oci.Image, error) {
		ref, err := oci.ParseReference(l.Ref)
		if err != nil {
			return nil, err
		}
		img, err := oci.Open(ctx, ref, s.openOptions(false, false, nil))
		if err != nil {
			return nil, fmt.Errorf("layer '%s': %w", l.Name, err)
		}
		return img, nil
	}
	if s.Pkgdata != "" {
		if err := k.readPkgdata(s.path(s.Pkgdata)); err != nil {
			return nil, err
		}
	}
	for p, v := range s.Versions {
		k.versions[p] = v
	}
	return k, nil
}

// readPkgdata reads the PKGV of every package in pkgdata/runtime/<pkg>,
// in any of the spellings bitbake has written ("PKGV: 1.0",
// "PKGV_pkg: 1.0", "PKGV:pkg: 1.0").
func (k *keyer) readPkgdata(dir string) error {
	for _, l := range k.spec.Layers {
		for _, p := range l.Packages {
			f, err := os.Open(filepath.Join(dir, "runtime", p))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("pkgdata: %w", err)
			}
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				key, val, ok := strings.Cut(sc.Text(), ": ")
				if ok && (key == "PKGV" || key == "PKGV_"+p || key == "PKGV:"+p) {
					k.versions[p] = strings.TrimSpace(val)
				}
			}
			f.Close()
		}
	}
	return nil
}

func (k *keyer) common(parent string, l Layer) inputs {
	s := k.spec
	in := inputs{
		Parent: parent, Name: l.Name, Type: l.Type,
		Machine: s.Machine, Tune: s.Tune, Arch: s.arch(), Variant: s.Variant,
		Compression: s.compression(), Mode: s.mode(), Exclude: slices.Sorted(slices.Values(s.Exclude)),
		TarRules: TarRules, Rootless: os.Geteuid() != 0, Owners: rootlessOwners(),
	}
	if k.epoch != nil {
		in.Epoch = strconv.FormatInt(k.epoch.Unix(), 10)
	}
	return in
}

// layer computes one layer's inputs; copying layers hash what they copy.
func (k *keyer) layer(ctx context.Context, parent string, l Layer) (inputs, error) {
	in := k.common(parent, l)
	switch l.Type {
	case TypePackages:
		in.Packages = slices.Sorted(slices.Values(l.Packages))
		in.Versions = map[string]string{}
		for _, p := range in.Packages {
			in.Versions[p] = k.versions[p]
		}
		in.Install = k.spec.install(l)
	case TypeImage:
		img, err := k.open(ctx, l)
		if err != nil {
			return in, err
		}
		img.Close()
		in.Paths = []string{l.Path}
		in.Embed = &embedInputs{Manifest: img.ManifestDesc.Digest, Format: l.format(), Tag: l.embedTag()}
		k.embedded[l.Name] = img.ManifestDesc.Digest
	default:
		items := k.spec.copies(l)
		in.Replace = l.Replace || l.Type == TypeHost
		h := sha256.New()
		links := map[[2]uint64]string{}
		for _, it := range items {
			in.Paths = append(in.Paths, it.dst)
			// The parents a copy makes where the lowers lack them come
			// from the source rootfs, with its metadata.
			if it.fromRootfs != "" {
				parts := strings.Split(strings.Trim(it.dst, "/"), "/")
				for i := 1; i < len(parts); i++ {
					p := strings.Join(parts[:i], "/")
					if err := k.hashObject(h, filepath.Join(it.fromRootfs, p), "/"+p, links); err != nil {
						return in, fmt.Errorf("layer '%s': %w", l.Name, err)
					}
				}
			}
			if err := k.hashTree(ctx, h, it.src, it.dst, links); err != nil {
				return in, fmt.Errorf("layer '%s': %w", l.Name, err)
			}
		}
		in.Content = "sha256:" + hex.EncodeToString(h.Sum(nil))
	}
	return in, nil
}

// copyItem is one thing a copying layer puts into the image.
type copyItem struct {
	src string // on the build host
	dst string // in the image, absolute
	// fromRootfs: the parents of dst are the source rootfs's own, and
	// are copied with their metadata when the lowers lack them.
	fromRootfs string
	// replace: what the layers below hold at a path is replaced where it
	// differs (rsync -a without --delete), instead of kept.
	replace bool
	// into: as cp -a, a dst that ends in / or is a directory in the image
	// gets the source inside it, under the source's name.
	into bool
}

func (s *Spec) copies(l Layer) []copyItem {
	var items []copyItem
	switch l.Type {
	case TypeDirectories, TypeFiles:
		src := s.path(l.Source)
		for _, p := range l.Paths {
			items = append(items, copyItem{src: filepath.Join(src, p), dst: p, fromRootfs: src, replace: l.Replace})
		}
	case TypeHost:
		// As the class's cp -a, a host copy overwrites.
		for _, c := range l.Copy {
			src, dst, _ := cutLast(c, ":")
			items = append(items, copyItem{src: s.path(src), dst: dst, replace: true, into: true})
		}
	}
	return items
}

// hashTree hashes the tree at src as it will appear at dst.
func (k *keyer) hashTree(ctx context.Context, h io.Writer, src, dst string, links map[[2]uint64]string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		return k.hashObject(h, p, filepath.Join(dst, rel), links)
	})
}

// hashObject hashes one object as the layer will carry it: its path in
// the image, type, permissions, owner, the mtime the layer will carry,
// link target, device numbers, the xattrs a layer keeps, and its content,
// or, for a further name of a hardlinked file, the first name. Owner,
// mode and type are the effective ones, as the copy gives them: recorded
// in an override_stat where the source has one, squashed as an
// unprivileged build's layer will be.
func (k *keyer) hashObject(h io.Writer, p, dst string, links map[[2]uint64]string) error {
	e, err := overlay.Stat(p)
	if err != nil {
		return err
	}
	meta := e.Meta
	meta.Squash(k.squash)
	mtime := meta.Mtime
	if k.epoch != nil && mtime.After(*k.epoch) {
		mtime = *k.epoch
	}
	fmt.Fprintf(h, "%s\x00%d\x00%o\x00%d:%d\x00%d\x00%s\x00%d:%d\x00",
		dst, meta.Type, meta.Mode, meta.UID, meta.GID, mtime.Unix(), meta.Link, meta.Major, meta.Minor)
	for _, x := range slices.Sorted(maps.Keys(meta.Xattrs)) {
		if layer.KeepsXattr(x) {
			fmt.Fprintf(h, "x:%s=%q\x00", x, meta.Xattrs[x])
		}
	}
	if meta.Type == overlay.TypeReg {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Nlink > 1 {
			id := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[id]; ok {
				_, err := fmt.Fprintf(h, "link:%s\n", first)
				return err
			}
			links[id] = dst
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		c := sha256.New()
		_, err = io.Copy(c, f)
		f.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%x", c.Sum(nil))
	}
	_, err = io.WriteString(h, "\n")
	return err
}
