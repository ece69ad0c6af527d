package appliers

import (
	"context"
	"fmt"
	"io"

	"github.com/moby/go-archive"
)

// MobyNaive applies every layer in order into one dir with go-archive's
// ApplyUncompressedLayer (UnpackLayer), what the vfs graph driver runs
// inside chrootarchive. go-archive v0.3.x confines paths with os.Root, so
// the library call behaves like the chrooted one for these layers.
func MobyNaive(_ context.Context, layoutDir, tag, work string) (string, func() error, error) {
	return applyInto(layoutDir, tag, work, func(root string, r io.Reader) error {
		if _, err := archive.ApplyUncompressedLayer(root, r, &archive.TarOptions{}); err != nil {
			return fmt.Errorf("go-archive ApplyUncompressedLayer: %w", err)
		}
		return nil
	})
}

// MobyOverlay2 unpacks each layer into its own empty dir the way moby's
// overlay2 graph driver does (UntarUncompressed with
// WhiteoutFormat: OverlayWhiteoutFormat), then mounts them as a kernel
// overlay.
func MobyOverlay2(_ context.Context, layoutDir, tag, work string) (string, func() error, error) {
	return applyLayered(layoutDir, tag, work, func(dirs []string, i int, r io.Reader) error {
		opts := &archive.TarOptions{WhiteoutFormat: archive.OverlayWhiteoutFormat}
		if err := archive.UntarUncompressed(r, dirs[i], opts); err != nil {
			return fmt.Errorf("go-archive UntarUncompressed (overlay2): %w", err)
		}
		return nil
	})
}
