package oci

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// Transport names where an image lives, in the words skopeo users know.
type Transport string

const (
	TransportOCI           Transport = "oci"
	TransportOCIArchive    Transport = "oci-archive"
	TransportDockerArchive Transport = "docker-archive"
	TransportDocker        Transport = "docker"
)

// Reference names an image:
//
//	oci:DIR[:TAG]  oci-archive:FILE[:TAG]  docker-archive:FILE[:NAME:TAG]
//	docker://HOST/REPO[:TAG|@sha256:...]
//
// As in skopeo, the path ends at the first colon. An empty Tag means the
// only image of a layout or archive.
type Reference struct {
	Transport Transport
	Path      string // oci, oci-archive, docker-archive
	// Tag is the ref.name of an OCI layout or archive, the NAME:TAG of a
	// docker archive, or the tag of a registry image.
	Tag string
	// Repository is a registry image's HOST/REPO.
	Repository string
	// Digest pins a registry image.
	Digest digest.Digest
}

// tagPattern is the ref.name grammar of the OCI image-layout annotations
// (a tag, optionally with path-like components; ':' and '+' are
// separators there too, as in Yocto's OCI_IMAGE_TAG).
var tagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._/:+-]{0,254}$`)

// ParseReference parses s; errors are bad input and quote s.
func ParseReference(s string) (Reference, error) {
	bad := func(why string) (Reference, error) {
		return Reference{}, inputerr.New("image reference %q: %s", s, why)
	}
	transport, rest, ok := strings.Cut(s, ":")
	if !ok {
		return bad("no transport (want oci:, oci-archive:, docker-archive: or docker://)")
	}
	r := Reference{Transport: Transport(transport)}
	switch r.Transport {
	case TransportOCI, TransportOCIArchive:
		r.Path, r.Tag, _ = strings.Cut(rest, ":")
		if r.Tag != "" && !tagPattern.MatchString(r.Tag) {
			return bad(fmt.Sprintf("invalid tag %q", r.Tag))
		}
	case TransportDockerArchive:
		r.Path, r.Tag, _ = strings.Cut(rest, ":")
		if r.Tag != "" && !dockerNameTag.MatchString(r.Tag) {
			return bad(fmt.Sprintf("invalid NAME:TAG %q", r.Tag))
		}
	case TransportDocker:
		name, ok := strings.CutPrefix(rest, "//")
		if !ok || name == "" {
			return bad("want docker://HOST/REPO[:TAG|@sha256:...]")
		}
		if repo, dig, ok := strings.Cut(name, "@"); ok {
			d, err := digest.Parse(dig)
			if err != nil {
				return bad(fmt.Sprintf("invalid digest %q: %v", dig, err))
			}
			r.Digest, name = d, repo
		}
		if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
			name, r.Tag = name[:i], name[i+1:]
			if !dockerTag.MatchString(r.Tag) {
				return bad(fmt.Sprintf("invalid tag %q", r.Tag))
			}
		}
		if !dockerRepo.MatchString(name) {
			return bad(fmt.Sprintf("invalid repository %q", name))
		}
		r.Repository = name
		return r, nil
	default:
		return bad(fmt.Sprintf("unknown transport %q (want oci, oci-archive, docker-archive or docker)", transport))
	}
	if r.Path == "" {
		return bad("empty path")
	}
	return r, nil
}

var (
	dockerTag     = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	dockerRepo    = regexp.MustCompile(`^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)+$|^[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$`)
	dockerNameTag = regexp.MustCompile(`^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$|^[a-z0-9._-]+(/[a-z0-9._-]+)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

func (r Reference) String() string {
	switch r.Transport {
	case TransportDocker:
		s := "docker://" + r.Repository
		if r.Tag != "" {
			s += ":" + r.Tag
		}
		if r.Digest != "" {
			s += "@" + r.Digest.String()
		}
		return s
	}
	if r.Tag == "" {
		return string(r.Transport) + ":" + r.Path
	}
	return string(r.Transport) + ":" + r.Path + ":" + r.Tag
}
