// Package fs mounts an overlay.Union for installs: served as a FUSE
// filesystem (go-fuse v2: the node tree, open files with passthrough where
// it is safe, merged directory listings) or mounted by the kernel's
// overlayfs where the process may. It owns the mount's life (Session, and
// the daemon of `layerfs mount` with its start and readiness protocol),
// the registry of live mounts, and the recovery of stale ones. It knows
// nothing of OCI or the cache.
package fs
