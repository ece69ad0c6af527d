// Package oci reads and writes OCI images: references and their
// transports (layouts written crash-safely, archives, registries), image
// configs, merged views of an image's layers, and commits of an upper
// onto an image. The layer tar writer is oci/layer, the hostile-tar
// applier oci/unpack. It mounts nothing.
package oci
