package layers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci"
)

// Env is the build described by the variables of meta-virtualization's
// image-oci class (research/image-oci.md), read as the class reads them.
type Env struct {
	Spec *Spec
	// Cache is the layer cache dir: OCI_LAYER_CACHE_DIR, or the class's
	// default ${TOPDIR}/oci-layer-cache/${MACHINE}; "" without TOPDIR
	// (layerfs's default cache then).
	Cache string
	// NoCache: OCI_LAYER_CACHE is not 1, or OCI_LAYER_CACHE_DIR is set
	// empty; the build keeps nothing.
	NoCache bool
	// Deploy is where the class's outputs go, nil with an explicit
	// output image.
	Deploy *Deploy
}

// Deploy names the class's outputs in IMGDEPLOYDIR: the layout
// ${IMAGE_NAME}${IMAGE_NAME_SUFFIX}-oci, its two tars, and the
// ${IMAGE_BASENAME}-${tag}-oci* links.
type Deploy struct {
	Dir      string // IMGDEPLOYDIR
	Name     string // ${IMAGE_NAME}${IMAGE_NAME_SUFFIX}-oci
	Basename string // IMAGE_BASENAME
	Tag      string // OCI_IMAGE_TAG
	Tars     bool   // OCI_IMAGE_TAR_OUTPUT non-empty
}

// Layout is the output layout's path.
func (d *Deploy) Layout() string { return filepath.Join(d.Dir, d.Name) }

// The class's defaults (the ?= of image-oci.bbclass) for variables the
// environment does not set at all. A variable set to "" stays empty, as
// bitbake would have it.
var envDefaults = map[string]string{
	"OCI_LAYER_MODE":        "single",
	"OCI_LAYER_CACHE":       "1",
	"OCI_BASE_IMAGE_TAG":    "latest",
	"OCI_IMAGE_TAG":         "latest",
	"OCI_IMAGE_CMD":         "/bin/sh",
	"OCI_IMAGE_TAR_OUTPUT":  "true",
	"OCI_IMAGE_AUTO_LABELS": "1",
}

// EnvVars are the variables FromEnv reads (and the bbclass exports).
var EnvVars = []string{
	"OCI_LAYER_MODE", "OCI_LAYERS", "OCI_LAYER_CACHE", "OCI_LAYER_CACHE_DIR",
	"OCI_BASE_IMAGE", "OCI_BASE_IMAGE_TAG", "OCI_IMAGE_TAG",
	"OCI_IMAGE_ENTRYPOINT", "OCI_IMAGE_ENTRYPOINT_ARGS", "OCI_IMAGE_CMD", "OCI_IMAGE_ENV_VARS",
	"OCI_IMAGE_LABELS", "OCI_IMAGE_PORTS", "OCI_IMAGE_RUNTIME_UID", "OCI_IMAGE_WORKINGDIR",
	"OCI_IMAGE_STOPSIGNAL", "OCI_IMAGE_OS", "OCI_IMAGE_ARCH", "OCI_IMAGE_SUBARCH",
	"OCI_IMAGE_AUTHOR", "OCI_IMAGE_AUTHOR_EMAIL", "OCI_IMAGE_AUTO_LABELS", "OCI_IMAGE_REVISION",
	"OCI_IMAGE_BRANCH", "OCI_IMAGE_BUILD_DATE",
	"OCI_IMAGE_TAR_OUTPUT", "IMGDEPLOYDIR", "IMAGE_NAME", "IMAGE_NAME_SUFFIX", "IMAGE_BASENAME",
	"MACHINE", "TUNE_PKGARCH", "PKGDATA_DIR", "IMAGE_ROOTFS", "SOURCE_DATE_EPOCH",
	"DEPLOY_DIR_IMAGE", "TOPDIR", "TARGET_ARCH", "LAYERFS_INSTALL",
}

// FromEnv reads the build from lookup (os.LookupEnv in the CLI). image,
// if set, is the output instead of the class's deploy layout. now dates
// the created label when neither OCI_IMAGE_BUILD_DATE nor
// SOURCE_DATE_EPOCH does.
func FromEnv(ctx context.Context, lookup func(string) (string, bool), image string, epoch *time.Time, now time.Time) (*Env, error) {
	get := func(k string) string {
		if v, ok := lookup(k); ok {
			return v
		}
		return envDefaults[k]
	}
	bad := func(format string, args ...any) (*Env, error) {
		return nil, inputerr.New("--from-env: "+format, args...)
	}
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	s := &Spec{File: "(environment)", Dir: wd, Machine: get("MACHINE"), Tune: get("TUNE_PKGARCH"), Install: get("LAYERFS_INSTALL")}
	env := &Env{Spec: s}

	// Layers: one per OCI_LAYERS word in multi mode; in single mode the
	// class copies the whole IMAGE_ROOTFS (its top-level names, as the
	// shell glob ${IMAGE_ROOTFS}/* sees them) as one layer.
	rootfs := get("IMAGE_ROOTFS")
	if rootfs != "" {
		if rootfs, err = filepath.Abs(rootfs); err != nil {
			return nil, err
		}
	}
	s.Mode = ModeMulti
	if get("OCI_LAYER_MODE") == ModeMulti {
		words := strings.Fields(get("OCI_LAYERS"))
		if len(words) == 0 {
			return bad("OCI_LAYER_MODE = 'multi' requires OCI_LAYERS to be defined")
		}
		for _, w := range words {
			if strings.Count(w, ":") < 2 {
				return bad("invalid OCI_LAYERS entry '%s': format is 'name:type:content'", w)
			}
			typ := strings.Split(w, ":")[1]
			switch typ {
			case TypePackages, TypeHost:
			case TypeDirectories, TypeFiles:
				if rootfs == "" {
					return bad("OCI_LAYERS entry '%s': %s layers copy from IMAGE_ROOTFS, which is not set", w, typ)
				}
			default:
				return bad("invalid layer type '%s' in '%s': must be 'packages', 'directories', 'files', or 'host'", typ, w)
			}
			l, err := ParseLayerFlag(w, rootfs)
			if err != nil {
				return bad("OCI_LAYERS entry '%s': %v", w, err)
			}
			s.Layers = append(s.Layers, l)
		}
	} else {
		if rootfs == "" {
			return bad("single-layer mode copies IMAGE_ROOTFS, which is not set")
		}
		ents, err := os.ReadDir(rootfs)
		if err != nil {
			return bad("IMAGE_ROOTFS: %v", err)
		}
		// The class copies the rootfs over the base with rsync -a, which
		// takes dot-entries too; without a base, with cp ${IMAGE_ROOTFS}/*,
		// which does not.
		withBase := get("OCI_BASE_IMAGE") != ""
		l := Layer{Name: "rootfs", Type: TypeDirectories, Source: rootfs, Replace: true}
		for _, e := range ents {
			if withBase || !strings.HasPrefix(e.Name(), ".") {
				l.Paths = append(l.Paths, "/"+e.Name())
			}
		}
		if len(l.Paths) == 0 {
			return bad("IMAGE_ROOTFS %s is empty", rootfs)
		}
		s.Layers = []Layer{l}
	}

	if dir := get("PKGDATA_DIR"); dir != "" {
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			s.Pkgdata, _ = filepath.Abs(dir)
		}
	}

	// Cache: only "1" turns it on, as in the class.
	// An OCI_LAYER_CACHE_DIR set but empty keeps nothing, as in the class;
	// unset, it has the class's default.
	dir, set := lookup("OCI_LAYER_CACHE_DIR")
	switch {
	case get("OCI_LAYER_CACHE") != "1", set && dir == "":
		env.NoCache = true
	case set:
		env.Cache = dir
	case get("TOPDIR") != "":
		env.Cache = filepath.Join(get("TOPDIR"), "oci-layer-cache", s.Machine)
	}

	// Base image: a path, a recipe's deployed layout, or (which the class
	// refuses) a registry image.
	if base := get("OCI_BASE_IMAGE"); base != "" {
		tag := get("OCI_BASE_IMAGE_TAG")
		first, _, _ := strings.Cut(base, ":")
		switch {
		case strings.HasPrefix(base, "/"):
			s.Base = oci.Reference{Transport: oci.TransportOCI, Path: base, Tag: tag}.String()
		case strings.Contains(base, "/") || strings.Contains(first, "."):
			ref := "docker://" + base
			if !strings.Contains(base[strings.LastIndex(base, "/")+1:], ":") && !strings.Contains(base, "@") {
				ref += ":" + tag
			}
			s.Base = ref
		default:
			deploy := get("DEPLOY_DIR_IMAGE")
			if deploy == "" {
				return bad("OCI_BASE_IMAGE names the recipe %q, whose layout is in DEPLOY_DIR_IMAGE, which is not set", base)
			}
			dir := filepath.Join(deploy, base+"-"+tag+"-oci")
			if _, err := os.Stat(filepath.Join(dir, "index.json")); err != nil {
				return bad("base image '%s' not found at expected path: %s", base, dir)
			}
			s.Base = oci.Reference{Transport: oci.TransportOCI, Path: dir, Tag: tag}.String()
		}
	}

	// Output.
	tag := get("OCI_IMAGE_TAG")
	if tag == "" {
		return bad("OCI_IMAGE_TAG is empty")
	}
	if image != "" {
		s.Image = image
	} else {
		d := &Deploy{Dir: get("IMGDEPLOYDIR"), Name: get("IMAGE_NAME") + get("IMAGE_NAME_SUFFIX") + "-oci",
			Basename: get("IMAGE_BASENAME"), Tag: tag, Tars: get("OCI_IMAGE_TAR_OUTPUT") != ""}
		if d.Dir == "" || get("IMAGE_NAME") == "" {
			return bad("set IMGDEPLOYDIR and IMAGE_NAME (the class's output names), or give --image REF")
		}
		if d.Dir, err = filepath.Abs(d.Dir); err != nil {
			return nil, err
		}
		env.Deploy = d
		s.Image = oci.Reference{Transport: oci.TransportOCI, Path: d.Layout(), Tag: tag}.String()
	}

	// Config, in the class's order: user labels, auto labels (which win),
	// env, ports, user, workdir, stop signal, os, arch, entrypoint, cmd,
	// author.
	c := &s.Config
	labels, err := kvWords("OCI_IMAGE_LABELS", get("OCI_IMAGE_LABELS"))
	if err != nil {
		return nil, err
	}
	if get("OCI_IMAGE_AUTO_LABELS") == "1" {
		for _, a := range []struct{ label, v, git string }{
			{"org.opencontainers.image.revision", get("OCI_IMAGE_REVISION"), "--short"},
			{"org.opencontainers.image.ref.name", get("OCI_IMAGE_BRANCH"), "--abbrev-ref"},
			{"org.opencontainers.image.created", get("OCI_IMAGE_BUILD_DATE"), ""},
		} {
			v := a.v
			switch {
			case v == "none":
				continue
			case v != "":
			case a.git != "":
				v = gitHead(ctx, get("TOPDIR"), a.git)
				if v == "HEAD" { // a detached HEAD names no branch
					v = ""
				}
			default:
				// The class takes the wall clock; a reproducible build
				// takes its SOURCE_DATE_EPOCH.
				t := now
				if epoch != nil {
					t = *epoch
				}
				v = t.UTC().Format("2006-01-02T15:04:05Z")
			}
			if v != "" {
				if labels == nil {
					labels = map[string]string{}
				}
				labels[a.label] = v
			}
		}
	}
	if labels != nil {
		c.Labels = labels
	}
	if envs, err := kvWords("OCI_IMAGE_ENV_VARS", get("OCI_IMAGE_ENV_VARS")); err != nil {
		return nil, err
	} else if envs != nil {
		c.Env = envs
	}
	if ports := strings.Fields(get("OCI_IMAGE_PORTS")); len(ports) > 0 {
		c.Ports = &ports
	}
	for _, f := range []struct {
		dst **string
		v   string
	}{{&c.User, get("OCI_IMAGE_RUNTIME_UID")}, {&c.Workdir, get("OCI_IMAGE_WORKINGDIR")}, {&c.StopSignal, get("OCI_IMAGE_STOPSIGNAL")}} {
		if w := strings.Fields(f.v); len(w) > 0 {
			*f.dst = &w[0]
		}
	}
	s.OS = get("OCI_IMAGE_OS")
	s.Arch = get("OCI_IMAGE_ARCH")
	if s.Arch == "" {
		s.Arch = goArch(get("TARGET_ARCH"))
	}
	s.Variant = get("OCI_IMAGE_SUBARCH")
	if ep := get("OCI_IMAGE_ENTRYPOINT"); ep != "" {
		words, err := shellWords(ep)
		if err != nil {
			return bad("OCI_IMAGE_ENTRYPOINT: %v", err)
		}
		if len(words) > 0 {
			c.Entrypoint = &words
		}
	}
	cmdVar := "OCI_IMAGE_ENTRYPOINT_ARGS"
	if get(cmdVar) == "" {
		cmdVar = "OCI_IMAGE_CMD"
	}
	if v := get(cmdVar); v != "" {
		words, err := shellWords(v)
		if err != nil {
			return bad("%s: %v", cmdVar, err)
		}
		if len(words) > 0 {
			c.Cmd = &words
		}
	}
	c.Author = get("OCI_IMAGE_AUTHOR_EMAIL")
	return env, nil
}

// kvWords splits v into shell words of KEY=VALUE, as umoci's
// --config.env and --config.label take them; nil when v has none.
func kvWords(name, v string) (map[string]string, error) {
	var m map[string]string
	for _, w := range strings.Fields(v) {
		k, val, ok := strings.Cut(w, "=")
		if !ok || k == "" {
			return nil, inputerr.New("--from-env: %s: %q: want KEY=VALUE", name, w)
		}
		if m == nil {
			m = map[string]string{}
		}
		m[k] = val
	}
	return m, nil
}

// gitHead asks git in dir for HEAD (--short: the commit; --abbrev-ref:
// the branch), "" when it cannot say.
func gitHead(ctx context.Context, dir, how string) string {
	if dir == "" {
		return ""
	}
	out, err := exec.CommandContext(ctx, "git", "-C", dir, "rev-parse", how, "HEAD").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// goArch maps a Yocto TARGET_ARCH to Go's (and OCI's) name, as
// oe.go.map_arch does; "" for one it does not know (the build then takes
// the base's, or this machine's).
func goArch(a string) string {
	for _, m := range []struct{ re, arch string }{
		{`^i.86$`, "386"}, {`^x86_64$`, "amd64"}, {`^arm.*`, "arm"}, {`^aarch64.*`, "arm64"},
		{`^mips64el.*`, "mips64le"}, {`^mips64.*`, "mips64"}, {`^mips$`, "mips"}, {`^mipsel$`, "mipsle"},
		{`^p(pc|owerpc)64le`, "ppc64le"}, {`^p(pc|owerpc)64`, "ppc64"}, {`^riscv64$`, "riscv64"},
		{`^loongarch64$`, "loong64"},
	} {
		if regexp.MustCompile(m.re).MatchString(a) {
			return m.arch
		}
	}
	return ""
}

// shellWords splits s as Python's shlex.split does by default (POSIX
// rules, no comments): blanks separate words; single quotes keep
// everything; in double quotes a backslash escapes only \ and ";
// outside quotes it escapes any next character.
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case ch == '\'':
			inWord = true
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("no closing quotation in %q", s)
			}
			w.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case ch == '"':
			inWord = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '\\' || s[i+1] == '"') {
					i++
				}
				w.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("no closing quotation in %q", s)
			}
		case ch == '\\':
			inWord = true
			if i+1 >= len(s) {
				return nil, fmt.Errorf("no escaped character in %q", s)
			}
			i++
			w.WriteByte(s[i])
		default:
			inWord = true
			w.WriteByte(ch)
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}
