package layers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	lfs "github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/oci"
)

// embedInputs are an image layer's own key inputs: the embedded image by
// manifest digest (its content, wherever it lives), and how it is put.
type embedInputs struct {
	Manifest digest.Digest `json:"manifest"`
	Format   string        `json:"format"`
	Tag      string        `json:"tag"`
}

func (l Layer) format() string {
	if l.Format == "" {
		return FormatOCIArchive
	}
	return l.Format
}

// embedTag is the tag the embedded layout or archive names its image by.
func (l Layer) embedTag() string {
	ref, err := oci.ParseReference(l.Ref)
	if err == nil && ref.Tag != "" && !strings.Contains(ref.Tag, ":") {
		return ref.Tag
	}
	return "latest"
}

// openEmbedded opens an image layer's image, for this spec's platform.
func (b *builder) openEmbedded(ctx context.Context, l Layer) (*oci.Image, error) {
	ref, err := oci.ParseReference(l.Ref)
	if err != nil {
		return nil, err
	}
	img, err := oci.Open(ctx, ref, b.spec.openOptions(b.opts.Strict, b.opts.Insecure, b.opts.Warn))
	if err != nil {
		return nil, fmt.Errorf("layer '%s': %w", l.Name, err)
	}
	return img, nil
}

// embed writes an image layer's image into the mount at l.Path, with
// PATH.sha256sums beside it. Everything is staged in the temp entry and
// then copied in through the mount's root, so that a symlink in the
// layers below cannot take the write out of the image.
func (b *builder) embed(ctx context.Context, tmpDir, mnt string, l Layer) (err error) {
	fail := func(err error) error { return fmt.Errorf("layer '%s': %w", l.Name, err) }
	img, err := b.openEmbedded(ctx, l)
	if err != nil {
		return err
	}
	defer img.Close()
	// The key holds the digest the image had when keys were made; a tag
	// that moved since must not put another image under that key.
	if want := b.keys.embedded[l.Name]; want != "" && img.ManifestDesc.Digest != want {
		return fail(fmt.Errorf("%s changed during the build (was %s, now %s); build again", l.Ref, want, img.ManifestDesc.Digest))
	}
	stage := filepath.Join(tmpDir, "embed")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return fail(err)
	}
	defer os.RemoveAll(stage)
	name := path.Base(l.Path)
	src := filepath.Join(stage, name)
	switch l.format() {
	case FormatOCIArchive, FormatOCIDir:
		tr := oci.TransportOCIArchive
		if l.format() == FormatOCIDir {
			tr = oci.TransportOCI
		}
		if _, err := oci.WriteTo(ctx, img, oci.Reference{Transport: tr, Path: src, Tag: l.embedTag()}, oci.CopyOptions{}); err != nil {
			return fail(err)
		}
		// Mtimes are the build's, which a layer clamps to
		// SOURCE_DATE_EPOCH; without one they would differ run to run
		// for no reason: the image's own date is as good as any.
		if err := setTreeTimes(src, img.Config.Created); err != nil {
			return fail(err)
		}
	case FormatRootfs:
		applied, err := ApplyImage(ctx, b.opts.Cache, img, ApplyImageOptions{MaxLayerSize: b.opts.MaxLayerSize, Warn: b.opts.Warn})
		if err != nil {
			return fail(err)
		}
		defer applied.Release()
		if err := os.Mkdir(src, 0o755); err != nil {
			return fail(err)
		}
		srv, err := lfs.Mount(src, lfs.Options{Lowers: applied.Rootfs})
		if err != nil {
			return fail(fmt.Errorf("mount the view of %s: %v", l.Ref, err))
		}
		defer func() {
			if uerr := srv.Unmount(); uerr != nil {
				lfs.Unmount(src, true)
			}
			srv.Wait()
		}()
	}
	sums, err := sha256sums(ctx, stage, name)
	if err != nil {
		return fail(err)
	}
	sumsFile := filepath.Join(tmpDir, "embed.sha256sums")
	if err := os.WriteFile(sumsFile, sums, 0o644); err != nil {
		return fail(err)
	}
	defer os.Remove(sumsFile)
	if img.Config.Created != nil {
		t := *img.Config.Created
		os.Chtimes(sumsFile, t, t)
	}
	// What the layers below hold there (an older embedding) is replaced.
	items := []copyItem{{src: src, dst: l.Path, replace: true}, {src: sumsFile, dst: l.Path + ".sha256sums", replace: true}}
	if err := copyInto(ctx, mnt, items); err != nil {
		return fail(err)
	}
	return nil
}

// setTreeTimes dates every file of the tree at root t (nil: left alone).
func setTreeTimes(root string, t *time.Time) error {
	if t == nil {
		return nil
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		return os.Chtimes(p, *t, *t)
	})
}

// sha256sums lists every regular file under dir/name (or dir/name
// itself) as `sha256sum -c` reads it, with paths relative to dir, sorted.
func sha256sums(ctx context.Context, dir, name string) ([]byte, error) {
	var lines []string
	err := filepath.WalkDir(filepath.Join(dir, name), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if strings.ContainsAny(rel, "\n\\") {
			// sha256sum escapes such names; no image needs them here.
			return fmt.Errorf("%s: a name with a newline or backslash cannot be listed", rel)
		}
		lines = append(lines, hex.EncodeToString(h.Sum(nil))+"  "+rel+"\n")
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(lines, func(a, b string) int { return strings.Compare(a[66:], b[66:]) })
	return []byte(strings.Join(lines, "")), nil
}
