package unpack

import (
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// LayerPath turns the name of a layer tar's entry (or a hardlink's target)
// into a layer path, "" for the root. It is the one rule of every reader
// of layer tars, the applier and the image views alike, so that what one
// refuses the other does too. It refuses, saying why, a name that could
// reach outside the root (a ".." element anywhere: it is refused rather
// than cleaned away, since appliers that resolve it step by step through
// symlinks disagree on where it lands) or that no system call could name:
// a NUL byte, PATH_MAX or more bytes, an element longer than NAME_MAX (the
// union could not serve it).
func LayerPath(name string) (rel, refused string) {
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
