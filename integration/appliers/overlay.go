package appliers

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// mountLayers mounts the layer dirs (base first) as a read-only kernel
// overlayfs at work/merged, the way every overlay snapshotter or graph
// driver presents an image: the topmost layer first in lowerdir. The
// kernel refuses a lone lowerdir without an upperdir, so a single layer
// gets an empty dir below it.
func mountLayers(layerDirs []string, work string) (string, func() error, error) {
	dirs := append([]string(nil), layerDirs...)
	if len(dirs) == 1 {
		empty := filepath.Join(work, "empty-lower")
		if err := os.Mkdir(empty, 0o755); err != nil {
			return "", nil, fmt.Errorf("mkdir %s: %w", empty, err)
		}
		dirs = append([]string{empty}, dirs...)
	}
	lower := make([]string, len(dirs))
	for i, d := range dirs {
		if strings.ContainsAny(d, ":,") {
			return "", nil, fmt.Errorf("layer dir %q contains ':' or ','", d)
		}
		lower[len(dirs)-1-i] = d
	}
	merged := filepath.Join(work, "merged")
	if err := os.Mkdir(merged, 0o755); err != nil {
		return "", nil, fmt.Errorf("mkdir %s: %w", merged, err)
	}
	// index=off as containerd's and moby's overlay drivers mount layers.
	opts := "lowerdir=" + strings.Join(lower, ":") + ",index=off"
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, opts); err != nil {
		return "", nil, fmt.Errorf("mount overlay at %s (%s): %w", merged, opts, err)
	}
	return merged, func() error { return Unmount(merged) }, nil
}

// Unmount unmounts dir, falling back to a lazy unmount when it is busy.
func Unmount(dir string) error {
	if err := unix.Unmount(dir, 0); err != nil {
		if err2 := unix.Unmount(dir, unix.MNT_DETACH); err2 != nil {
			return fmt.Errorf("unmount %s: %w (lazy: %v)", dir, err, err2)
		}
	}
	return nil
}

// layerDirs creates one empty dir per layer under work.
func layerDirs(work string, n int) ([]string, error) {
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = filepath.Join(work, fmt.Sprintf("layer%d", i))
		if err := os.Mkdir(dirs[i], 0o755); err != nil {
			return nil, fmt.Errorf("mkdir layer dir: %w", err)
		}
	}
	return dirs, nil
}

// applyInto applies every layer in order into one dir, work/rootfs, the
// way naive appliers (a vfs driver, the native snapshotter) build a rootfs.
func applyInto(layoutDir, tag, work string, apply func(root string, r io.Reader) error) (string, func() error, error) {
	root := filepath.Join(work, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", nil, fmt.Errorf("mkdir %s: %w", root, err)
	}
	err := forEachLayer(layoutDir, tag, func(_ int, r io.Reader) error { return apply(root, r) })
	if err != nil {
		return "", nil, err
	}
	return root, noCleanup, nil
}

// applyLayered unpacks layer i into its own empty dir (dirs[:i] are the
// ones below) and mounts them all as a kernel overlay, the way overlay
// snapshotters and graph drivers do.
func applyLayered(layoutDir, tag, work string, apply func(dirs []string, i int, r io.Reader) error) (string, func() error, error) {
	n, err := LayerCount(layoutDir, tag)
	if err != nil {
		return "", nil, err
	}
	dirs, err := layerDirs(work, n)
	if err != nil {
		return "", nil, err
	}
	if err := forEachLayer(layoutDir, tag, func(i int, r io.Reader) error { return apply(dirs, i, r) }); err != nil {
		return "", nil, err
	}
	return mountLayers(dirs, work)
}
