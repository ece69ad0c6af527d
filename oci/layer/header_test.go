package layer

import (
	"archive/tar"
	"testing"
	"time"

	"github.com/layerfs/layerfs/overlay"
)

// Every type a layer holds maps to a tar type and back; what a header
// the writer makes says, Meta reads back.
func TestTypesAndMetaRoundTrip(t *testing.T) {
	for _, ty := range []overlay.Type{overlay.TypeReg, overlay.TypeDir, overlay.TypeSymlink, overlay.TypeChar, overlay.TypeBlock, overlay.TypeFifo} {
		if got := TypeOf(Typeflag(ty)); got != ty {
			t.Errorf("%v: tar type %q reads back as %v", ty, Typeflag(ty), got)
		}
	}
	if TypeOf(tar.TypeLink) != 0 || Typeflag(overlay.TypeSocket) != 0 {
		t.Errorf("a hardlink makes no object of its own, and no layer holds a socket")
	}
	mtime := time.Unix(1700000000, 0)
	hdr := &tar.Header{Typeflag: tar.TypeChar, Mode: 0o4620, Uid: 7, Gid: 8, ModTime: mtime, Devmajor: 1, Devminor: 3, Size: 99, Linkname: "x",
		PAXRecords: map[string]string{XattrRecord + "user.k": "v", "LIBARCHIVE.creationtime": "1"}}
	m := Meta(hdr)
	if m.Type != overlay.TypeChar || m.Mode != 0o4620 || m.UID != 7 || m.GID != 8 || !m.Mtime.Equal(mtime) || m.Major != 1 || m.Minor != 3 ||
		m.Size != 0 || m.Link != "" || len(m.Xattrs) != 1 || m.Xattrs["user.k"] != "v" {
		t.Errorf("Meta(%+v) = %+v", hdr, m)
	}
}
