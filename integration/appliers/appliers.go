// Package appliers reconstructs an image's root filesystem from an OCI
// layout with the real code of each consumer that matters: the binaries
// (umoci, skopeo+podman, GNU tar behind go-containerregistry) and the Go
// libraries that containerd, moby and containers/storage apply layers
// with, both the way their naive (vfs/native) drivers do it and the way
// their overlay drivers do it (one dir per layer, then a kernel overlay).
//
// Every applier has the same shape: given the layout dir, the tag and an
// empty scratch dir that it owns, it returns the dir where the image's
// root filesystem can be read, and a cleanup that undoes any mount. The
// scratch dir itself is the caller's to remove, after cleanup.
package appliers

import (
	"context"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/layerfs/layerfs/integration/tree"
)

// Func reconstructs the rootfs of layoutDir:tag using work as scratch.
type Func func(ctx context.Context, layoutDir, tag, work string) (rootfs string, cleanup func() error, err error)

// Applier is one named way of reconstructing a rootfs.
type Applier struct {
	Name string
	// Tools lists the programs the applier runs; a test must check that
	// they are installed before calling Apply.
	Tools []string
	Apply Func
	// DiffOptions are the tree.Diff options this applier needs; all
	// appliers compare everything today.
	DiffOptions tree.Options

	known   func(tree.Difference) string
	refuses func(v1.Image) (string, error)
}

// All returns every applier, in a fixed order.
func All() []Applier {
	return []Applier{
		{Name: "umoci", Tools: []string{"umoci"}, Apply: Umoci, refuses: umociRefusesZstd, known: dropsEmptyXattr},
		{Name: "ggcr-tar", Tools: []string{"tar"}, Apply: GGCRTar},
		{Name: "podman", Tools: []string{"skopeo", "podman"}, Apply: Podman, known: anyOf(dropsEmptyXattr, clampsPre1970)},
		{Name: "containerd-naive", Apply: ContainerdNaive, known: anyOf(containerdDropsTrusted, clampsPre1970, naiveKeepsDirXattrs)},
		{Name: "containerd-overlay", Apply: ContainerdOverlay, known: anyOf(containerdDropsTrusted, clampsPre1970)},
		{Name: "moby-naive", Apply: MobyNaive, known: anyOf(clampsPre1970, naiveKeepsDirXattrs)},
		{Name: "moby-overlay2", Apply: MobyOverlay2, known: clampsPre1970},
		{Name: "storage-naive", Apply: StorageNaive, known: anyOf(clampsPre1970, naiveKeepsDirXattrs)},
		{Name: "storage-overlay", Apply: StorageOverlay, known: clampsPre1970},
	}
}

func noCleanup() error { return nil }

// ByName returns the applier called name; it panics on an unknown name,
// a bug in the caller.
func ByName(name string) Applier {
	for _, a := range All() {
		if a.Name == name {
			return a
		}
	}
	panic("appliers: no applier " + name)
}
