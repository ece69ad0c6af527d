package layer

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"runtime"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/overlay"
)

// Compression is how a layer blob is compressed.
type Compression string

const (
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
	Uncompressed Compression = "none"
)

// ParseCompression accepts the names the CLI and specs use.
func ParseCompression(s string) (Compression, error) {
	switch Compression(s) {
	case Gzip, Zstd, Uncompressed:
		return Compression(s), nil
	case "":
		return Gzip, nil
	}
	return "", fmt.Errorf("unknown compression %q (want gzip, zstd or none)", s)
}

// MediaType is the OCI layer media type for c.
func (c Compression) MediaType() string {
	switch c {
	case Zstd:
		return v1.MediaTypeImageLayerZstd
	case Uncompressed:
		return v1.MediaTypeImageLayer
	}
	return v1.MediaTypeImageLayerGzip
}

// Fixed compression parameters: the compressed digest depends on them, so
// they are part of the reproducibility promise and never vary with the
// machine. The level matches gzip's and pigz's default.
const (
	gzipLevel     = 6
	gzipBlockSize = 1 << 20
	zstdLevel     = 3
)

// Options control how a layer dir becomes a layer.
type Options struct {
	Compression Compression
	// Threads is the number of compression goroutines; 0 means GOMAXPROCS.
	// The output does not depend on it.
	Threads int
	// SourceDateEpoch, when set, clamps every mtime to it and dates
	// whiteouts with it.
	SourceDateEpoch *time.Time
	// OpaqueMarkers writes a recreated directory as .wh..wh..opq plus its
	// new contents, instead of explicit whiteouts of the old contents.
	// Explicit whiteouts are the default because go-containerregistry
	// before v0.21.8 ignores opaque markers.
	OpaqueMarkers bool
	// Rootfs reads the committed dir as a full root filesystem rather than
	// an overlay upper, and writes its delta over the lower: what it adds
	// and what it changes (type, mode, owner, layer xattrs, content or
	// link target, and mtime unless SourceDateEpoch clamps it; directories
	// when their own metadata changed or as parents of emitted entries).
	// Lower file content is read only where type and size match. A
	// hardlink group of the rootfs is emitted whole unless every name is
	// unchanged (and, with layer-dir lowers, one object below too). The
	// layer is the one an overlay upper that made the same changes gives.
	// A rootfs holds no overlay markers: a 0:0 character device, a .wh.
	// name or an overlay opaque or whiteout xattr in it is bad input.
	// OpaqueMarkers has no effect, since nothing in a rootfs is opaque.
	Rootfs bool
	// Deletions (Rootfs only) also whites out what the lower has and the
	// rootfs lacks: the topmost missing path only (one whiteout for a
	// missing tree), never beneath a path the rootfs turns into a
	// non-directory (DESIGN.md rule 3), never an excluded path. Without
	// it a rootfs layer has no whiteouts at all, so that a rootfs holding
	// only the new files adds them without deleting the rest.
	Deletions bool
	// Exclude lists paths that the layer never carries, neither as
	// entries nor as whiteouts, whichever the mode. Patterns are absolute
	// image paths in which "*" matches within one component, "?" one
	// character, and a "**" component any number (zero or more) of whole
	// components; a trailing "/**" matches one or more, so /var/cache/**
	// excludes everything beneath /var/cache while /var/cache itself is
	// still emitted when it changed. A pattern that matches a directory
	// excludes it and everything beneath it. See ExcludeMatcher for the
	// details and ValidateExclude to check patterns up front; Write
	// refuses bad ones as bad input.
	Exclude []string
	// SquashOwner, when set, maps the owner a rootless writer leaves on
	// disk to root, as rootless podman's user namespace does: an object of
	// the committed dir or of a layer-dir lower that carries no ownership
	// record (override_stat) and whose uid is SquashOwner.UID is written
	// as uid 0, and one whose gid is SquashOwner.GID as gid 0. Recorded
	// owners, and the owners of a lower listed from an image's tars, stay
	// as they are. A rootless build sets it to its own euid and egid: what
	// its install commands create unchowned is root's in the image.
	SquashOwner *overlay.Owner
	// Warn receives notes about skipped entries (sockets).
	Warn func(msg string)
}

// Info describes a written layer.
type Info struct {
	Descriptor v1.Descriptor
	DiffID     digest.Digest
	// Entries counts the tar entries, whiteouts included.
	Entries int
}

// Write writes the layer that turns lower into lower+upper to w:
// a tar of upper's delta, compressed as opts say. It returns the blob's
// descriptor and the uncompressed tar's digest.
func Write(ctx context.Context, w io.Writer, upper string, lower overlay.Lower, opts Options) (Info, error) {
	if lower == nil {
		lower = overlay.Empty{}
	}
	threads := opts.Threads
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	// Tar headers arrive as 512-byte writes; batch them for the file.
	bw := bufio.NewWriterSize(w, 1<<20)
	blob := &countingHash{h: sha256.New(), w: bw}
	var cw io.WriteCloser
	switch opts.Compression {
	case Gzip, "":
		gz, err := pgzip.NewWriterLevel(blob, gzipLevel)
		if err != nil {
			return Info{}, err
		}
		if err := gz.SetConcurrency(gzipBlockSize, threads); err != nil {
			return Info{}, err
		}
		// pgzip writes the zero time as a non-zero MTIME; the gzip header
		// must not date the blob.
		gz.ModTime = time.Unix(0, 0)
		cw = gz
	case Zstd:
		// Parallel zstd cuts the stream into jobs whose size depends only
		// on the window, so the bytes are the same for any thread count
		// as long as the job path is taken, which needs concurrency >= 2.
		zw, err := zstd.NewWriter(blob,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(zstdLevel)),
			zstd.WithEncoderConcurrency(max(threads, 2)),
			zstd.WithConcurrentBlocks(true))
		if err != nil {
			return Info{}, err
		}
		cw = zw
	case Uncompressed:
		cw = nopCloser{blob}
	default:
		return Info{}, fmt.Errorf("unknown compression %q", opts.Compression)
	}
	diff := &countingHash{h: sha256.New(), w: cw}
	n, err := writeDiff(ctx, diff, upper, lower, opts)
	if err != nil {
		cw.Close()
		return Info{}, err
	}
	if err := cw.Close(); err != nil {
		return Info{}, fmt.Errorf("compress layer: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return Info{}, err
	}
	return Info{
		Descriptor: v1.Descriptor{
			MediaType: opts.Compression.orDefault().MediaType(),
			Digest:    digest.NewDigest(digest.SHA256, blob.h),
			Size:      blob.n,
		},
		DiffID:  digest.NewDigest(digest.SHA256, diff.h),
		Entries: n,
	}, nil
}

func (c Compression) orDefault() Compression {
	if c == "" {
		return Gzip
	}
	return c
}

// countingHash passes writes through to w while hashing and counting them.
type countingHash struct {
	h hash.Hash
	w io.Writer
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
