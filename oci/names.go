package oci

import (
	"path"
	"strings"
)

// archivePath makes the name of an archive's member (an oci-archive's, a
// docker archive's: not a layer's, whose members are only ever looked up
// by name) comparable: no leading "./" or "/", and no "..", which cannot
// climb above the archive's root.
func archivePath(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}
