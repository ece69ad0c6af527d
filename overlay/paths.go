package overlay

import "strings"

// Split splits a relative layer path into its parent ("" for top-level
// names) and its last element.
func Split(rel string) (dir, name string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return "", rel
	}
	return rel[:i], rel[i+1:]
}

// Join joins a relative layer path and a name; the root is "".
func Join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
