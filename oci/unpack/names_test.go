package unpack

import (
	"strings"
	"testing"
)

// The one name rule of layer tars: what it makes of a name, and what it
// refuses, with the reason the applier and the views then report.
func TestLayerPath(t *testing.T) {
	long := strings.Repeat("d/", 2047) + "f" // 4095 bytes: fits PATH_MAX with its NUL
	cases := []struct{ name, rel, refused string }{
		{"etc/passwd", "etc/passwd", ""},
		{"./etc/passwd", "etc/passwd", ""},
		{"/etc/passwd", "etc/passwd", ""},
		{"etc//x/./y/", "etc/x/y", ""},
		{"./", "", ""},
		{"", "", ""},
		{"etc/../x", "", "path leaves the layer root"},
		{"..", "", "path leaves the layer root"},
		{"a/..", "", "path leaves the layer root"},
		{"a/b\x00c", "", "NUL in name"},
		{long, long, ""},
		{long + "x", "", "name longer than PATH_MAX (4096 bytes)"},
		{strings.Repeat("n", 255), strings.Repeat("n", 255), ""},
		{"d/" + strings.Repeat("n", 256), "", "path component longer than NAME_MAX"},
	}
	for _, c := range cases {
		rel, refused := LayerPath(c.name)
		if rel != c.rel || refused != c.refused {
			t.Errorf("LayerPath(%.40q) = %.40q, %q; want %.40q, %q", c.name, rel, refused, c.rel, c.refused)
		}
	}
}
