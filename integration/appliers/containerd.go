package appliers

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/pkg/archive"
)

// ContainerdNaive applies every layer in order into one dir with
// containerd's archive.Apply and no options: what the native snapshotter
// (and any non-overlay mount) does in core/diff/apply.
func ContainerdNaive(ctx context.Context, layoutDir, tag, work string) (string, func() error, error) {
	root := filepath.Join(work, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", nil, fmt.Errorf("mkdir %s: %w", root, err)
	}
	err := forEachLayer(layoutDir, tag, func(_ int, r io.Reader) error {
		if _, err := archive.Apply(ctx, root, r); err != nil {
			return fmt.Errorf("containerd archive.Apply: %w", err)
		}
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	return root, noCleanup, nil
}

// ContainerdOverlay applies each layer into its own empty upper the way
// core/diff/apply/apply_linux.go does for the overlayfs snapshotter
// (Docker 29's default store, Kubernetes): OverlayConvertWhiteout turns
// whiteouts into 0:0 char devices and opaque markers into
// trusted.overlay.opaque, and WithParents lists the layers below, nearest
// first, so that implied parent dirs copy their attributes. The layers are
// then mounted as a kernel overlay, as the snapshotter presents them.
func ContainerdOverlay(ctx context.Context, layoutDir, tag, work string) (string, func() error, error) {
	n, err := LayerCount(layoutDir, tag)
	if err != nil {
		return "", nil, err
	}
	dirs, err := layerDirs(work, n)
	if err != nil {
		return "", nil, err
	}
	err = forEachLayer(layoutDir, tag, func(i int, r io.Reader) error {
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
	if err != nil {
		return "", nil, err
	}
	return mountLayers(dirs, work)
}
