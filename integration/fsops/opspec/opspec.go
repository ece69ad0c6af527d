// Package opspec is the operation format of the fsops program: what the
// mount differential tests write and fsops runs.
package opspec

import (
	"encoding/json"
	"fmt"
)

// Op is one operation. Paths are relative to the root and never start
// with "/"; "" is the root itself.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path,omitempty"`
	Path2 string `json:"path2,omitempty"` // rename/link target, sameino's other name
	// Data is what write-like ops write, the symlink target, the xattr
	// value (hex-decoded when Hex), or the sh command.
	Data string `json:"data,omitempty"`
	Hex  bool   `json:"hex,omitempty"`
	Off  int64  `json:"off,omitempty"`
	Size int64  `json:"size,omitempty"`
	Mode uint32 `json:"mode,omitempty"`
	Uid  int    `json:"uid,omitempty"`
	Gid  int    `json:"gid,omitempty"`
	// Name is the xattr name, or the key of an ino_mark.
	Name string `json:"name,omitempty"`
	// Kind of mknod: char, block or fifo.
	Kind  string `json:"kind,omitempty"`
	Major uint32 `json:"major,omitempty"`
	Minor uint32 `json:"minor,omitempty"`
	// Atime and Mtime of utimens, in ns since the epoch; -1 is UTIME_NOW,
	// -2 UTIME_OMIT.
	Atime int64    `json:"atime,omitempty"`
	Mtime int64    `json:"mtime,omitempty"`
	Flags []string `json:"flags,omitempty"`
}

// Has reports whether the op carries a flag.
func (o Op) Has(flag string) bool {
	for _, f := range o.Flags {
		if f == flag {
			return true
		}
	}
	return false
}

func (o Op) String() string {
	if len(o.Data) > 40 {
		o.Data = fmt.Sprintf("%s...(%d bytes)", o.Data[:12], len(o.Data))
	}
	b, _ := json.Marshal(o)
	return string(b)
}
