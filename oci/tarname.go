package oci

import (
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// layerPath turns the name of a layer tar's entry (or a hardlink's target)
// into a layer path, "" for the root. It is the one rule of every reader
// of layer tars, the applier and the image views alike, so that what one
// refuses the other does too. It refuses, saying why, a name that could
// reach outside the root (a ".." element anywhere: it is refused rather
// than cleaned away, since appliers that resolve it step by step through
// symlinks disagree on where it lands) or that no system call could name:
// a NUL byte, PATH_MAX or more bytes, an element longer than NAME_MAX (the
// union could not serve it).
func layerPath(name string) (rel, refused string) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", "NUL in name"
	}
	for el := range strings.SplitSeq(name, "/") {
		if el == ".." {
			return "", "path leaves the layer root"
		}
	}
	rel = strings.TrimPrefix(path.Clean("/"+name), "/")
	if len(rel) >= unix.PathMax {
		return "", fmt.Sprintf("name longer than PATH_MAX (%d bytes)", len(rel))
	}
	for el := range strings.SplitSeq(rel, "/") {
		if len(el) > 255 {
			return "", "path component longer than NAME_MAX"
		}
	}
	return rel, ""
}

// cleanName is layerPath for the views: a refused name is bad input.
func cleanName(name string) (string, error) {
	rel, refused := layerPath(name)
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
