package appliers

import (
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/layerfs/layerfs/integration/tree"
)

// A known limitation is a measured, documented way in which an applier
// cannot reproduce what the image holds. Each is matched as narrowly as
// possible (one applier, one field, one direction) so that it can never
// hide a broken layer.

// containerdDropsTrusted: containerd's pkg/archive refuses every trusted.*
// xattr from an archive (tar_unix.go setxattr returns ENOTSUP "admin
// attributes from archive not supported", which createTarFile logs and
// ignores), naive and overlay alike. The image does carry it: every other
// applier restores it.
func containerdDropsTrusted(d tree.Difference) string {
	if strings.HasPrefix(d.Field, "xattr trusted.") && d.Got == "absent" {
		return "containerd ignores trusted.* xattrs in layers (pkg/archive/tar_unix.go setxattr)"
	}
	return ""
}

// clampsPre1970 (containerd, moby and containers/storage, so podman too):
// their chtimes wrappers (boundTime in pkg/archive/time.go, go-archive
// time.go, c/storage pkg/system/chtimes.go) replace an mtime before
// 1970 with 1970-01-01. umoci and GNU tar keep it, so the layer has it.
func clampsPre1970(d tree.Difference) string {
	if d.Field == "mtime" && d.W != nil && d.G != nil && d.W.Mtime < 0 && d.G.Mtime == 0 {
		return "mtimes before 1970 are set to 0 (boundTime)"
	}
	return ""
}

// dropsEmptyXattr (measured; umoci 0.4.7, and podman 4.3.1 through
// skopeo 1.9.3 into containers-storage): an xattr whose value is empty
// is not restored, while GNU tar and the containerd, moby and current
// containers/storage libraries restore it from the same layer.
func dropsEmptyXattr(d tree.Difference) string {
	if strings.HasPrefix(d.Field, "xattr ") && d.Want == `""` && d.Got == "absent" {
		return "xattrs with an empty value are not restored"
	}
	return ""
}

// naiveKeepsDirXattrs (containerd, moby and containers/storage applying
// into one dir): a dir entry over an existing dir is merged, "just apply
// the metadata from the layer" (applyNaive, UnpackLayer): xattrs in the
// header are set, but none is ever removed. So a dir's xattr removed in
// an upper layer (setfacl -k, setfattr -x) survives from the layer below;
// no layer can express it short of re-creating the whole dir. The
// overlay variants, umoci and ggcr-tar all drop it.
func naiveKeepsDirXattrs(d tree.Difference) string {
	if strings.HasPrefix(d.Field, "xattr ") && d.Want == "absent" && d.W != nil && d.W.Type == tree.Dir {
		return "a naive apply merges dir metadata and never removes an xattr"
	}
	return ""
}

// anyOf returns the first reason any of the checks gives.
func anyOf(checks ...func(tree.Difference) string) func(tree.Difference) string {
	return func(d tree.Difference) string {
		for _, c := range checks {
			if why := c(d); why != "" {
				return why
			}
		}
		return ""
	}
}

// umociRefusesZstd: Debian's umoci 0.4.7 predates zstd layers (added in
// umoci 0.5) and rejects the media type before unpacking anything.
func umociRefusesZstd(img v1.Image) (string, error) {
	ls, err := img.Layers()
	if err != nil {
		return "", fmt.Errorf("layers: %w", err)
	}
	for _, l := range ls {
		mt, err := l.MediaType()
		if err != nil {
			return "", fmt.Errorf("layer media type: %w", err)
		}
		if mt == types.OCILayerZStd {
			return "blob is not correct mediatype: " + string(mt), nil
		}
	}
	return "", nil
}

// Known returns why difference d is a documented limitation of a, or ""
// when it is not, i.e. when it is a real disagreement.
func (a Applier) Known(d tree.Difference) string {
	if a.known == nil {
		return ""
	}
	return a.known(d)
}

// Refusal returns the error text that a must fail with on the image
// layoutDir:tag because the applier cannot read it at all, or "" when it
// must succeed. A test asserts the refusal, so that an upgraded applier
// that starts to accept the image is noticed.
func (a Applier) Refusal(layoutDir, tag string) (string, error) {
	if a.refuses == nil {
		return "", nil
	}
	img, err := Image(layoutDir, tag)
	if err != nil {
		return "", err
	}
	return a.refuses(img)
}
