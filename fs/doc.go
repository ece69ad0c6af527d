// Package fs serves an overlay.Union as a FUSE filesystem (go-fuse v2):
// the node tree, open files with passthrough where it is safe, merged
// directory listings, mounting, serving, unmounting and recovering stale
// mounts. It knows nothing of OCI or the cache.
package fs
