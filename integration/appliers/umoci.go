package appliers

import (
	"context"
	"path/filepath"
)

// Umoci unpacks the image with the umoci binary, as root (no --rootless),
// the tool that Yocto's and Isar's image classes use. umoci applies
// whiteouts only to lower layers, the spec's semantics.
func Umoci(ctx context.Context, layoutDir, tag, work string) (string, func() error, error) {
	bundle := filepath.Join(work, "bundle")
	if _, err := run(ctx, nil, "umoci", "unpack", "--image", layoutDir+":"+tag, bundle); err != nil {
		return "", nil, err
	}
	return filepath.Join(bundle, "rootfs"), noCleanup, nil
}
