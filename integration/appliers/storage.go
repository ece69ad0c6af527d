package appliers

import (
	"context"
	"fmt"
	"io"

	"go.podman.io/storage/pkg/archive"
)

// StorageNaive applies every layer in order into one dir with
// containers/storage's ApplyUncompressedLayer, what its vfs driver (via
// the naive diff driver and chrootarchive) runs for podman, buildah and
// CRI-O. The chroot only contains hostile paths; these layers are not.
func StorageNaive(_ context.Context, layoutDir, tag, work string) (string, func() error, error) {
	return applyInto(layoutDir, tag, work, func(root string, r io.Reader) error {
		if _, err := archive.ApplyUncompressedLayer(root, r, &archive.TarOptions{}); err != nil {
			return fmt.Errorf("containers/storage ApplyUncompressedLayer: %w", err)
		}
		return nil
	})
}

// StorageOverlay unpacks each layer into its own empty dir the way the
// containers/storage overlay driver's applyDiff does (UntarUncompressed
// with WhiteoutFormat: OverlayWhiteoutFormat, no mount program), then
// mounts them as a kernel overlay. The Podman applier runs the same
// driver end to end; this one isolates the library from skopeo/podman.
func StorageOverlay(_ context.Context, layoutDir, tag, work string) (string, func() error, error) {
	return applyLayered(layoutDir, tag, work, func(dirs []string, i int, r io.Reader) error {
		opts := &archive.TarOptions{WhiteoutFormat: archive.OverlayWhiteoutFormat}
		if err := archive.UntarUncompressed(r, dirs[i], opts); err != nil {
			return fmt.Errorf("containers/storage UntarUncompressed (overlay): %w", err)
		}
		return nil
	})
}
