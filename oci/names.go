package oci

import (
	"path"
	"strings"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci/unpack"
)

// cleanName is unpack.LayerPath for the views: a refused name is bad input.
func cleanName(name string) (string, error) {
	rel, refused := unpack.LayerPath(name)
	if refused != "" {
		return "", inputerr.New("tar entry %q: %s", name, refused)
	}
	return rel, nil
}

// archivePath makes the name of an archive's member (an oci-archive's, a
// docker archive's: not a layer's, whose members are only ever looked up
// by name) comparable: no leading "./" or "/", and no "..", which cannot
// climb above the archive's root.
func archivePath(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}
