package appliers

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// GGCRTar flattens the image with go-containerregistry's mutate.Extract
// (what `crane export` streams) and extracts that tar with GNU tar as
// root, keeping owners, modes, xattrs (all namespaces, ACLs included) and
// devices. Two flags differ from the obvious command line, both measured:
//   - no --acls: with it, GNU tar 1.34 takes ACLs only from SCHILY.acl.*
//     records and drops the SCHILY.xattr.system.posix_acl_* ones that OCI
//     layers carry; without it, --xattrs-include='*' restores them.
//   - --delay-directory-restore: Extract emits the top layer first, so a
//     dir's header precedes lower layers' entries inside it; GNU tar would
//     set the dir's mtime on leaving it, and lower children added later
//     bump it to the time of extraction.
func GGCRTar(ctx context.Context, layoutDir, tag, work string) (string, func() error, error) {
	img, err := Image(layoutDir, tag)
	if err != nil {
		return "", nil, err
	}
	root := filepath.Join(work, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", nil, fmt.Errorf("mkdir %s: %w", root, err)
	}
	flat := mutate.Extract(img)
	defer flat.Close()
	args := []string{"--xattrs", "--xattrs-include=*", "--numeric-owner",
		"-p", "--same-owner", "--delay-directory-restore", "-x", "-f", "-", "-C", root}
	cmd := exec.CommandContext(ctx, "tar", args...)
	cmd.Stdin = flat
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", nil, fmt.Errorf("mutate.Extract | tar %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return root, noCleanup, nil
}
