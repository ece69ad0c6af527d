// Package layers holds layer specs (YAML and the Yocto `name:type:content`
// form) and the build pipeline: key, look up, mount, install, commit,
// store, append.
package layers

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"go.yaml.in/yaml/v3"

	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/oci/layer"
)

// Layer types.
const (
	TypePackages    = "packages"
	TypeDirectories = "directories"
	TypeFiles       = "files"
	TypeHost        = "host"
	// TypeImage puts another image into this one at a path.
	TypeImage = "image"
)

// Formats of an image layer's embedded image.
const (
	FormatOCIArchive = "oci-archive"
	FormatOCIDir     = "oci-dir"
	FormatRootfs     = "rootfs"
)

// Modes.
const (
	ModeMulti  = "multi"
	ModeSingle = "single"
)

// DefaultInstall is the install command of packages layers that name none:
// Yocto's opkg into the mounted root.
const DefaultInstall = `opkg --offline-root "$LAYERFS_ROOT" install $LAYERFS_PACKAGES`

// Spec is a whole image build.
type Spec struct {
	Image       string   `yaml:"image"`
	Base        string   `yaml:"base"`
	Mode        string   `yaml:"mode"`
	OS          string   `yaml:"os"`
	Compression string   `yaml:"compression"`
	Exclude     []string `yaml:"exclude"`
	Machine     string   `yaml:"machine"`
	// Tune is Yocto's TUNE_PKGARCH: part of every key, as in the class.
	Tune           string            `yaml:"tune"`
	Arch           string            `yaml:"arch"`
	Variant        string            `yaml:"variant"`
	Install        string            `yaml:"install"`
	InstallTimeout Duration          `yaml:"install-timeout"`
	Pkgdata        string            `yaml:"pkgdata"`
	Versions       map[string]string `yaml:"versions"`
	Layers         []Layer           `yaml:"layers"`
	Config         Config            `yaml:"config"`
	// Cache names the shared tiers: registries asked on a local miss, in
	// order, and the one that gets what this build makes.
	Cache CacheTiers `yaml:"cache"`
	// Driver is what serves the installs' mounts: auto (the default),
	// kernel or fuse. It is in no key: the layer bytes do not depend on it.
	Driver string `yaml:"driver"`

	// Dir is where the spec lives: relative paths in it are relative to
	// Dir, and install commands run there.
	Dir string `yaml:"-"`
	// File names the spec in errors.
	File string `yaml:"-"`
}

// Layer is one entry of layers:.
type Layer struct {
	Name     string   `yaml:"name"`
	Type     string   `yaml:"type"`
	Packages []string `yaml:"packages"`
	Install  string   `yaml:"install"`
	Source   string   `yaml:"source"`
	Paths    []string `yaml:"paths"`
	Copy     []string `yaml:"copy"`
	// Replace makes a directories or files layer copy over what the
	// layers below hold where it differs, as rsync -a does, instead of
	// adding only what they lack.
	Replace bool `yaml:"replace"`
	// Ref, Path and Format are an image layer's: the image to embed,
	// where, and as what (oci-archive, the default; oci-dir; rootfs).
	Ref    string `yaml:"ref"`
	Path   string `yaml:"path"`
	Format string `yaml:"format"`
}

// CacheTiers are the registry repositories of the cache's shared tier,
// docker://HOST/REPO.
type CacheTiers struct {
	From []string `yaml:"from"`
	To   string   `yaml:"to"`
}

// Config is the image config a spec sets. A nil field inherits from the
// base; an empty one clears.
type Config struct {
	Entrypoint *[]string         `yaml:"entrypoint"`
	Cmd        *[]string         `yaml:"cmd"`
	Env        map[string]string `yaml:"env"`
	Labels     map[string]string `yaml:"labels"`
	Ports      *[]string         `yaml:"ports"`
	User       *string           `yaml:"user"`
	Workdir    *string           `yaml:"workdir"`
	StopSignal *string           `yaml:"stop-signal"`
	Author     string            `yaml:"author"`
}

// Duration is a YAML duration such as 10m or 90s.
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration such as 10m", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// Load reads and checks a spec file.
func Load(file string) (*Spec, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, inputerr.New("spec %s: does not exist", file)
		}
		return nil, fmt.Errorf("spec %s: %w", file, err)
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	return Parse(data, file, filepath.Dir(abs))
}

// Parse reads a spec; file names it in errors, dir anchors its relative
// paths. Unknown keys are errors: a misspelt key must not be ignored.
func Parse(data []byte, file, dir string) (*Spec, error) {
	s := &Spec{File: file, Dir: dir}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(s); err != nil && err != io.EOF {
		return nil, inputerr.New("spec %s: %s", file, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	// Local image paths in a spec are relative to the spec, like its other
	// paths, wherever the build is started.
	refs := []*string{&s.Image, &s.Base}
	for i := range s.Layers {
		refs = append(refs, &s.Layers[i].Ref)
	}
	for _, r := range refs {
		if *r == "" {
			continue
		}
		ref, err := oci.ParseReference(*r)
		if err != nil {
			return nil, inputerr.New("spec %s: %v", file, err)
		}
		if ref.Path != "" && !filepath.IsAbs(ref.Path) && ref.Transport != oci.TransportDocker {
			ref.Path = filepath.Join(dir, ref.Path)
			*r = ref.String()
		}
	}
	return s, nil
}

// ParseLayerFlag reads the Yocto form NAME:TYPE:ITEM+ITEM+… of OCI_LAYERS.
// Items are packages, image paths, or (for host) SRC:DST pairs; the source
// of directories and files layers is rootfs.
func ParseLayerFlag(s, rootfs string) (Layer, error) {
	name, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Layer{}, inputerr.New("--layer %q: want NAME:TYPE:ITEM+ITEM", s)
	}
	typ, content, _ := strings.Cut(rest, ":")
	l := Layer{Name: name, Type: typ}
	var items []string
	for it := range strings.SplitSeq(content, "+") {
		if it = strings.TrimSpace(it); it != "" {
			items = append(items, it)
		}
	}
	switch typ {
	case TypePackages:
		l.Packages = items
	case TypeDirectories, TypeFiles:
		l.Paths, l.Source = items, rootfs
		if rootfs == "" {
			return l, inputerr.New("--layer %q: a %s layer takes its files from --rootfs DIR", s, typ)
		}
	case TypeHost:
		l.Copy = items
	}
	return l, nil
}

var layerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Validate checks the spec before anything is built; every error is bad
// input naming the layer or key.
func (s *Spec) Validate() error {
	where := "spec " + s.File
	if s.Image == "" {
		return inputerr.New("%s: no output image: set image: or pass --image", where)
	}
	if _, err := oci.ParseReference(s.Image); err != nil {
		return err
	}
	if s.Base != "" {
		if _, err := oci.ParseReference(s.Base); err != nil {
			return err
		}
	}
	for _, r := range append(slices.Clone(s.Cache.From), s.Cache.To) {
		if r == "" {
			continue
		}
		ref, err := oci.ParseReference(r)
		if err != nil {
			return inputerr.New("%s: cache: %v", where, err)
		}
		if ref.Transport != oci.TransportDocker || ref.Tag != "" || ref.Digest != "" {
			return inputerr.New("%s: cache: %q: a cache tier is a registry repository, docker://HOST/REPO, without a tag", where, r)
		}
	}
	switch s.Mode {
	case "", ModeMulti, ModeSingle:
	default:
		return inputerr.New("%s: mode %q: want multi or single", where, s.Mode)
	}
	if _, err := fs.ParseDriver(s.Driver, where+": driver"); err != nil {
		return err
	}
	if _, err := layer.ParseCompression(s.compression()); err != nil {
		return inputerr.New("%s: compression %q: want gzip, zstd or none", where, s.Compression)
	}
	if s.OS != "" && s.OS != "linux" {
		return inputerr.New("%s: os %q: only linux images are built", where, s.OS)
	}
	if err := layer.ValidateExclude(s.Exclude); err != nil {
		return inputerr.New("%s: exclude: %v", where, err)
	}
	if s.Pkgdata != "" {
		if st, err := os.Stat(s.path(s.Pkgdata)); err != nil || !st.IsDir() {
			return inputerr.New("%s: pkgdata %s: not a directory", where, s.Pkgdata)
		}
	}
	if len(s.Layers) == 0 {
		return inputerr.New("%s: no layers", where)
	}
	seen := map[string]bool{}
	for i, l := range s.Layers {
		at := fmt.Sprintf("layer %d", i+1)
		if l.Name != "" {
			at = fmt.Sprintf("layer '%s'", l.Name)
		}
		if !layerName.MatchString(l.Name) {
			return inputerr.New("%s: %s: name %q: want letters, digits, '.', '_' or '-'", where, at, l.Name)
		}
		if seen[l.Name] {
			return inputerr.New("%s: %s: duplicate layer name", where, at)
		}
		seen[l.Name] = true
		if err := s.validateLayer(l); err != nil {
			return inputerr.New("%s: %s: %v", where, at, err)
		}
	}
	if c := s.Config; c.Ports != nil {
		ch := oci.ConfigChanges{Ports: *c.Ports}
		if err := ch.Validate(); err != nil {
			return inputerr.New("%s: config: %v", where, err)
		}
	}
	return nil
}

func (s *Spec) validateLayer(l Layer) error {
	if l.Type != TypeImage && (l.Ref != "" || l.Path != "" || l.Format != "") {
		return fmt.Errorf("ref:, path: and format: belong to image layers")
	}
	if l.Replace && l.Type != TypeDirectories && l.Type != TypeFiles {
		return fmt.Errorf("replace: belongs to directories and files layers (host layers always replace)")
	}
	needSource := func() error {
		if l.Source == "" {
			return fmt.Errorf("%s layers need source: DIR", l.Type)
		}
		st, err := os.Stat(s.path(l.Source))
		if err != nil {
			return fmt.Errorf("source %s: does not exist", l.Source)
		}
		if !st.IsDir() {
			return fmt.Errorf("source %s: not a directory", l.Source)
		}
		if len(l.Paths) == 0 {
			return errors.New("no paths")
		}
		for _, p := range l.Paths {
			if err := imagePath(p); err != nil {
				return err
			}
			if _, err := os.Lstat(filepath.Join(s.path(l.Source), p)); err != nil {
				return fmt.Errorf("path %s: not in source %s", p, l.Source)
			}
		}
		return nil
	}
	switch l.Type {
	case TypePackages:
		if len(l.Packages) == 0 {
			return errors.New("no packages")
		}
		for _, p := range l.Packages {
			if strings.ContainsAny(p, " \t\n'\"$`") {
				return fmt.Errorf("package %q: not a package name", p)
			}
		}
		if len(l.Paths) > 0 || len(l.Copy) > 0 || l.Source != "" {
			return errors.New("packages layers take packages: only")
		}
	case TypeDirectories, TypeFiles:
		if len(l.Packages) > 0 || len(l.Copy) > 0 {
			return fmt.Errorf("%s layers take source: and paths: only", l.Type)
		}
		return needSource()
	case TypeHost:
		if len(l.Copy) == 0 {
			return errors.New("host layers need copy: ['SRC:DST', ...]")
		}
		for _, c := range l.Copy {
			src, dst, ok := cutLast(c, ":")
			if !ok || src == "" || dst == "" {
				return fmt.Errorf("copy %q: want SRC:DST", c)
			}
			if _, err := os.Lstat(s.path(src)); err != nil {
				return fmt.Errorf("copy %q: source %s does not exist", c, src)
			}
			if err := imagePath(dst); err != nil {
				return fmt.Errorf("copy %q: %v", c, err)
			}
		}
	case TypeImage:
		if len(l.Packages) > 0 || len(l.Copy) > 0 || l.Source != "" || len(l.Paths) > 0 {
			return errors.New("image layers take ref:, path: and format: only")
		}
		if l.Ref == "" {
			return errors.New("image layers need ref: (the image to embed)")
		}
		if _, err := oci.ParseReference(l.Ref); err != nil {
			return err
		}
		if err := imagePath(l.Path); err != nil {
			return fmt.Errorf("path: %v", err)
		}
		if l.Path == "/" {
			return errors.New("path: an image is embedded below /, not as it")
		}
		switch l.Format {
		case "", FormatOCIArchive, FormatOCIDir, FormatRootfs:
		default:
			return fmt.Errorf("format %q: want oci-archive, oci-dir or rootfs", l.Format)
		}
	case "":
		return errors.New("no type: want packages, directories, files, host or image")
	default:
		return fmt.Errorf("unknown layer type %q: want packages, directories, files, host or image", l.Type)
	}
	return nil
}

// imagePath checks a path inside the image.
func imagePath(p string) error {
	if !strings.HasPrefix(p, "/") || p == "/" {
		return fmt.Errorf("path %q: want an absolute path inside the image", p)
	}
	if slices.Contains(strings.Split(p, "/"), "..") || path.Clean(p) != strings.TrimSuffix(p, "/") && path.Clean(p) != p {
		return fmt.Errorf("path %q: not a clean path", p)
	}
	return nil
}

// path resolves a path of the spec against its directory.
func (s *Spec) path(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(s.Dir, p)
}

func (s *Spec) compression() string {
	if s.Compression == "" {
		return string(layer.Gzip)
	}
	return s.Compression
}

func (s *Spec) mode() string {
	if s.Mode == "" {
		return ModeMulti
	}
	return s.Mode
}

func (s *Spec) arch() string {
	if s.Arch == "" {
		return defaultArch()
	}
	return s.Arch
}

// openOptions read the base image for the spec's platform: a
// multi-platform base resolves to the spec's arch and variant, else to
// the host's.
func (s *Spec) openOptions(strict, insecure bool, warn func(string)) oci.OpenOptions {
	o := oci.OpenOptions{Strict: strict, Insecure: insecure, Warn: warn}
	if s.Arch != "" {
		o.Platform = &v1.Platform{OS: "linux", Architecture: s.Arch, Variant: s.Variant}
		if p, err := oci.ParsePlatform("linux/" + s.Arch); err == nil && s.Variant == "" {
			o.Platform = p // armhf, armel
		}
	}
	return o
}

// adoptPlatform takes the base image's architecture and variant where
// the spec names none, and refuses a spec that names another: layers
// built for one architecture on a base of another make a broken image.
func (s *Spec) adoptPlatform(base *oci.Image) error {
	arch, variant := base.Config.Architecture, base.Config.Variant
	if arch == "" {
		return nil
	}
	if s.Arch == "" {
		s.Arch, s.Variant = arch, variant
		return nil
	}
	if s.Arch != arch || s.Variant != "" && variant != "" && s.Variant != variant {
		return inputerr.New("spec %s: arch %s%s differs from the base image's %s%s", s.File, s.Arch, slashed(s.Variant), arch, slashed(variant))
	}
	return nil
}

func slashed(v string) string {
	if v == "" {
		return ""
	}
	return "/" + v
}

// install is the command a packages layer runs.
func (s *Spec) install(l Layer) string {
	switch {
	case l.Install != "":
		return l.Install
	case s.Install != "":
		return s.Install
	}
	return DefaultInstall
}

// changes turns the spec's config into config edits.
func (c Config) changes(s *Spec) oci.ConfigChanges {
	ch := oci.ConfigChanges{OS: "linux", Arch: s.arch(), Variant: s.Variant, Author: c.Author,
		User: c.User, WorkingDir: c.Workdir, StopSignal: c.StopSignal, SortEnv: true}
	if c.Entrypoint != nil {
		ch.Entrypoint = append([]string{}, *c.Entrypoint...)
	}
	if c.Cmd != nil {
		ch.Cmd = append([]string{}, *c.Cmd...)
	}
	if c.Env != nil {
		ch.ClearEnv = len(c.Env) == 0
		for _, k := range slices.Sorted(maps.Keys(c.Env)) {
			ch.Env = append(ch.Env, k+"="+c.Env[k])
		}
	}
	if c.Labels != nil {
		ch.ClearLabels = len(c.Labels) == 0
		ch.Labels = c.Labels
	}
	if c.Ports != nil {
		ch.ClearPorts = len(*c.Ports) == 0
		ch.Ports = *c.Ports
	}
	return ch
}

// cutLast splits s around the last sep, as the Yocto class splits a host
// layer's SRC:DST (a source path may hold colons).
func cutLast(s, sep string) (before, after string, found bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}
