// Package oci reads and writes OCI images: references and their
// transports (layouts written crash-safely, archives, registries), image
// configs and their assembly (appendLayers), and commits of an upper onto
// an image. Its parts with one job each are packages of their own: the
// layer tar writer (oci/layer), the hostile-tar applier (oci/unpack) and
// the merged views of an image's layers (oci/view). It mounts nothing.
package oci
