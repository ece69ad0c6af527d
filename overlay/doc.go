// Package overlay owns the on-disk layer-dir format and union semantics.
//
// A layer dir is what the kernel's overlayfs writes as an upper: whiteouts
// are character devices 0:0, opaque directories carry
// trusted.overlay.opaque=y. Other writers leave other markers (fuse-overlayfs
// in rootless mode, AUFS-style layers unpacked raw, composefs xwhiteouts), so
// this package reads every variant and hides all of them: callers see names,
// metadata and whiteout/opaque flags, never a marker.
//
// The package does no FUSE and no OCI: fs builds the mount on it, oci builds
// layer tars from it.
package overlay
