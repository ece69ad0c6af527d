package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/oci/unpack"
	"github.com/layerfs/layerfs/oci/view"
	"github.com/layerfs/layerfs/overlay"
)

// CommitOptions describe one `layerfs commit`.
type CommitOptions struct {
	// Upper is the layer dir whose delta becomes the new layer.
	Upper string
	// RootfsTar, in place of Upper, is a root filesystem as a tar stream
	// (`tar -cf - -C ROOTFS .`, maybe compressed): how a fake root
	// (pseudo, fakeroot) hands over owners that only it knows. It is
	// applied as the hostile input it is (Apply, with Rootfs set) into a
	// temp dir beside the output, and committed as a rootfs (Layer.Rootfs
	// is set). Unprivileged, the owners go into override records and
	// Layer.SquashOwner defaults to this process's ids, so that symlinks,
	// which cannot carry a record, are root's.
	RootfsTar io.Reader
	// Lowers are the layer dirs beneath Upper, base first. Without them the
	// lower view is listed from the parent image's layer tars.
	Lowers []string
	// Image is the output, an oci: reference. An existing tag is appended to.
	Image Reference
	// Base is the image to start from when Image does not exist yet.
	Base   *Reference
	Layer  layer.Options
	Config ConfigChanges
	// Created dates the config and the history entry; the default is the
	// source date epoch, else now.
	Created *time.Time
	History string
	// Insecure allows plain HTTP to registries of Base and Image.
	Insecure bool
	// appending: Base is the image being replaced, not a base image.
	appending bool
}

// CommitResult describes a committed layer and the image it now tops.
type CommitResult struct {
	Layer    layer.Info
	Manifest v1.Descriptor
	Image    Reference
	// Layers is the number of layers of the image.
	Layers int
}

// Commit turns the upper into a layer on top of the image opts.Image names
// (or of opts.Base, or of nothing) and points the tag at the result. It
// checks all input before writing anything; on any failure the layout is
// left as it was.
func Commit(ctx context.Context, opts CommitOptions) (res CommitResult, err error) {
	if opts.RootfsTar != nil {
		if opts.Upper != "" {
			return res, inputerr.New("commit: an upper and a rootfs tar: give one")
		}
	} else if err := checkDir(opts.Upper, "upper"); err != nil {
		return res, err
	}
	for _, l := range opts.Lowers {
		if err := checkDir(l, "lower"); err != nil {
			return res, err
		}
	}
	if err := opts.Config.Validate(); err != nil {
		return res, err
	}
	if opts.Image.Transport != TransportOCI {
		return commitElsewhere(ctx, opts)
	}
	if opts.RootfsTar != nil {
		dir, cleanup, err := applyRootfsTar(ctx, opts)
		if err != nil {
			return res, err
		}
		defer cleanup()
		opts.Upper, opts.RootfsTar, opts.Layer.Rootfs = dir, nil, true
		if opts.Layer.SquashOwner == nil && os.Geteuid() != 0 {
			opts.Layer.SquashOwner = &overlay.Owner{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
		}
	}
	out := opts.Image
	o, err := openOutput(out)
	if err != nil {
		return res, err
	}
	defer func() { o.close(err) }()
	lay, exists := o.lay, o.exists

	// The parent: the image at the output tag, else the base, else none.
	var parent *Image
	if exists {
		if parent, err = openTag(out); err != nil {
			return res, err
		}
	}
	if parent != nil {
		defer parent.Close()
		if opts.Base != nil {
			return res, inputerr.New("--base %s: %s already exists; commit appends to it, so drop --base or name a new tag", opts.Base, parent.Ref)
		}
		out.Tag = parent.Ref.Tag
		if out.Tag == "" {
			out.Tag = parent.ManifestDesc.Annotations[v1.AnnotationRefName]
		}
	} else if opts.Base != nil {
		if parent, err = Open(ctx, *opts.Base, OpenOptions{Insecure: opts.Insecure}); err != nil {
			return res, err
		}
		defer parent.Close()
	}
	if out.Tag == "" {
		out.Tag = "latest"
	}

	var lower overlay.Lower = overlay.Empty{}
	switch {
	case len(opts.Lowers) > 0:
		lower = overlay.NewStack(opts.Lowers...)
	case parent != nil:
		if lower, err = view.List(ctx, parent); err != nil {
			return res, err
		}
	}

	var written layer.Info
	if _, err = lay.WriteBlob(func(w io.Writer) (digest.Digest, error) {
		written, err = layer.Write(ctx, w, opts.Upper, lower, opts.Layer)
		return written.Descriptor.Digest, err
	}); err != nil {
		err = fmt.Errorf("commit %s: %w", opts.Upper, err)
		if errors.Is(err, overlay.ErrUnsupportedUpper) || errors.Is(err, overlay.ErrReservedName) {
			err = inputerr.Wrap(err) // the upper is not a layer dir we can commit
		}
		return res, err
	}

	created := time.Now().UTC().Truncate(time.Second)
	switch {
	case opts.Created != nil:
		created = opts.Created.UTC()
	case opts.Layer.SourceDateEpoch != nil:
		created = opts.Layer.SourceDateEpoch.UTC()
	}
	add := addedLayer{written.Descriptor, written.DiffID, historyEntry{Created: &created, CreatedBy: "layerfs commit", Comment: opts.History, Author: opts.Config.Author}}
	var base *baseImage
	if opts.Base != nil && parent != nil && !opts.appending {
		base = &baseImage{parent, opts.Base}
	}
	mdesc, n, err := appendLayers(ctx, o, out.Tag, parent, base, []addedLayer{add}, &opts.Config, created)
	if err != nil {
		return res, err
	}
	return CommitResult{Layer: written, Manifest: mdesc, Image: out, Layers: n}, nil
}

// applyRootfsTar applies opts.RootfsTar into rootfs/ of a temp dir beside
// the output layout: on its filesystem, where a killed commit's leftovers
// are swept like its half-built layouts (removeStaleLayouts), and in a
// 0700 dir, since as root it holds the tar's setuid files and devices.
func applyRootfsTar(ctx context.Context, opts CommitOptions) (string, func(), error) {
	parent := filepath.Dir(filepath.Clean(opts.Image.Path))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", nil, err
	}
	removeStaleLayouts(parent)
	tmp, err := os.MkdirTemp(parent, fmt.Sprintf("%s%d-rootfs-", tmpPrefix, os.Getpid()))
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(tmp) }
	dir := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		cleanup()
		return "", nil, err
	}
	if _, err := unpack.Apply(ctx, opts.RootfsTar, dir, unpack.Options{Rootfs: true, Warn: opts.Layer.Warn}); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("rootfs tar: %w", err) // bad input stays so
	}
	return dir, cleanup, nil
}

// layoutExists reports whether ref names an existing OCI layout. An empty
// directory counts as absent; anything else is bad input.
func layoutExists(ref Reference) (bool, error) {
	st, err := os.Stat(ref.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, inputerr.Wrap(fmt.Errorf("--image %s: %w", ref, err))
	}
	if !st.IsDir() {
		return false, inputerr.New("--image %s: %s is not a directory", ref, ref.Path)
	}
	if _, err := os.Stat(filepath.Join(ref.Path, v1.ImageLayoutFile)); err == nil {
		return true, nil
	}
	if ents, _ := os.ReadDir(ref.Path); len(ents) > 0 {
		return false, inputerr.New("--image %s: %s is neither an OCI image layout nor empty", ref, ref.Path)
	}
	return false, nil
}

// openTag opens the image at ref in an existing layout, or returns nil
// when the tag (or, without a tag, any image) is not there yet.
func openTag(ref Reference) (*Image, error) {
	idx, err := readIndexFile(filepath.Join(ref.Path, v1.ImageIndexFile))
	if err != nil {
		return nil, inputerr.Wrap(fmt.Errorf("--image %s: %w", ref, err))
	}
	if ref.Tag == "" && len(idx.Manifests) == 0 {
		return nil, nil
	}
	if ref.Tag != "" {
		if _, err := FindTag(ref, idx); err != nil {
			return nil, nil
		}
	}
	return OpenImage(ref)
}

func checkDir(p, what string) error {
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return inputerr.New("%s %s: does not exist", what, p)
		}
		return inputerr.Wrap(fmt.Errorf("%s %s: %w", what, p, err))
	}
	if !st.IsDir() {
		return inputerr.New("%s %s: not a directory", what, p)
	}
	return nil
}

// removeStaleLayouts deletes half-built layouts that killed commits left
// beside their output. Their names carry the writer's pid; a layout is
// stale when that process is gone. (A reused pid only delays the sweep.)
func removeStaleLayouts(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), tmpPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			continue
		}
		if unix.Kill(pid, 0) == unix.ESRCH {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// commitElsewhere commits to an image that is not an oci: layout (an
// archive, a registry): the new image is made in a temporary layout and
// written there whole. Without --base, the image at --image is the parent
// it appends to, as for a layout.
func commitElsewhere(ctx context.Context, opts CommitOptions) (res CommitResult, err error) {
	dst := opts.Image
	if opts.Base == nil {
		// The image there is the parent, as an existing tag is for a
		// layout; where there is none yet, the commit starts one.
		exists := true
		switch dst.Transport {
		case TransportOCIArchive, TransportDockerArchive:
			_, serr := os.Stat(dst.Path)
			exists = !errors.Is(serr, fs.ErrNotExist)
		case TransportDocker:
			img, oerr := Open(ctx, dst, OpenOptions{Insecure: opts.Insecure})
			if errors.Is(oerr, ErrNotFound) {
				exists = false
			} else if oerr != nil {
				return res, oerr
			} else {
				img.Close()
			}
		}
		if exists {
			base := dst
			opts.Base, opts.appending = &base, true
		}
	}
	mdesc, err := viaLayout(ctx, dst, opts.Insecure, func(tmp Reference) error {
		opts.Image = tmp
		res, err = Commit(ctx, opts)
		return err
	})
	if err != nil {
		return res, err
	}
	res.Manifest = mdesc
	res.Image = dst
	return res, nil
}
