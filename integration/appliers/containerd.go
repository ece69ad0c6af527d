package appliers

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/pkg/archive"
)

// ContainerdNaive applies every layer in order into one dir with
// containerd's archive.Apply and no options: what the native snapshotter
// (and any non-overlay mount) does in core/diff/apply.
func ContainerdNaive(ctx context.Context, layoutDir, tag, work string) (string, func() error, error) {
	return applyInto(layoutDir, tag, work, func(root string, r io.Reader) error {
		if _, err := archive.Apply(ctx, root, r); err != nil {
			return fmt.Errorf("containerd archive.Apply: %w", err)
		}
		return nil
	})
}

// ContainerdOverlay applies each layer into its own empty upper the way
// core/diff/apply/apply_linux.go does for the overlayfs snapshotter
// (Docker 29's default store, Kubernetes): OverlayConvertWhiteout turns
// whiteouts into 0:0 char devices and opaque markers into
// trusted.overlay.opaque, and WithParents lists the layers below, nearest
// first, so that implied parent dirs copy their attributes. The layers are
// then mounted as a kernel overlay, as the snapshotter presents them.
func ContainerdOverlay(ctx context.Context, layoutDir, tag, work string) (string, func() error, error) {
	return applyLayered(layoutDir, tag, work, func(dirs []string, i int, r io.Reader) error {
		opts := []archive.ApplyOpt{archive.WithConvertWhiteout(archive.OverlayConvertWhiteout)}
		if i > 0 {
			parents := make([]string, 0, i)
			for j := i - 1; j >= 0; j-- {
				parents = append(parents, dirs[j])
			}
			opts = append(opts, archive.WithParents(parents))
		}
		if _, err := archive.Apply(ctx, dirs[i], r, opts...); err != nil {
			return fmt.Errorf("containerd archive.Apply (overlay): %w", err)
		}
		return nil
	})
}
