// Package oci writes and reads OCI images: layer tars made from layer dirs
// (ordered, reproducible, safe for every applier; see DESIGN.md "Layer tar
// rules"), image layouts written crash-safely, image configs, and image
// references. It mounts nothing.
package oci
