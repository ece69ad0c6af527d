// Package layer writes an upper dir (and the lowers it is read against)
// as one ordered, reproducible layer tar, compressed: the walk, the
// whiteouts, the excludes, the xattr allowlist (DESIGN.md "Layer tar
// rules").
package layer
