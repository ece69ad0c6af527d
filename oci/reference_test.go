package oci

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/internal/inputerr"
)

func TestParseReference(t *testing.T) {
	good := []struct {
		in   string
		want Reference
	}{
		{"oci:out", Reference{Transport: TransportOCI, Path: "out"}},
		{"oci:/a/b:v1.0", Reference{Transport: TransportOCI, Path: "/a/b", Tag: "v1.0"}},
		{"oci-archive:x.tar:latest", Reference{Transport: TransportOCIArchive, Path: "x.tar", Tag: "latest"}},
		{"docker-archive:x.tar:localhost/app:1", Reference{Transport: TransportDockerArchive, Path: "x.tar", Tag: "localhost/app:1"}},
		{"docker://127.0.0.1:5000/ns/app:1.2", Reference{Transport: TransportDocker, Repository: "127.0.0.1:5000/ns/app", Tag: "1.2"}},
		{"docker://busybox", Reference{Transport: TransportDocker, Repository: "busybox"}},
		{"docker://reg:5000/app@sha256:" + strings.Repeat("a", 64), Reference{Transport: TransportDocker, Repository: "reg:5000/app", Digest: digest.Digest("sha256:" + strings.Repeat("a", 64))}},
	}
	for _, g := range good {
		got, err := ParseReference(g.in)
		if err != nil || got != g.want {
			t.Errorf("ParseReference(%q) = %+v, %v; want %+v", g.in, got, err, g.want)
		}
		if s := got.String(); s != g.in {
			t.Errorf("String() = %q, want %q", s, g.in)
		}
	}
	bad := map[string]string{
		"out":                       "no transport",
		"tarball:x":                 `unknown transport "tarball"`,
		"oci:":                      "empty path",
		"oci:dir:bad tag":           "invalid tag",
		"docker:busybox":            "docker://",
		"docker://Upper/Case":       "invalid repository",
		"docker://reg/app@sha256:1": "invalid digest",
	}
	for in, want := range bad {
		_, err := ParseReference(in)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), in) || !inputerr.Is(err) {
			t.Errorf("ParseReference(%q) error %v: want bad input naming it and %q", in, err, want)
		}
	}
}
