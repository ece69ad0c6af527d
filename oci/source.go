package oci

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/internal/compress"
	"github.com/layerfs/layerfs/internal/inputerr"
)

// blobSource reads the blobs of a layout or an archive.
type blobSource interface {
	// Open opens the blob with digest d.
	Open(d digest.Digest) (io.ReadCloser, error)
	// File names a file that holds exactly the blob, or "" (then callers
	// copy instead of hardlinking).
	File(d digest.Digest) string
	Close() error
}

// layoutSource reads an OCI layout directory.
type layoutSource struct{ dir string }

func (s layoutSource) File(d digest.Digest) string {
	return filepath.Join(s.dir, "blobs", d.Algorithm().String(), d.Encoded())
}

func (s layoutSource) Open(d digest.Digest) (io.ReadCloser, error) {
	if err := d.Validate(); err != nil {
		return nil, err // never join an unvalidated digest into a path
	}
	return os.Open(s.File(d))
}

func (layoutSource) Close() error { return nil }

// archiveSource reads an oci-archive: a tar of a layout. Entries are read
// in place by offset (the archive is not compressed), nothing is unpacked.
type archiveSource struct {
	f       *os.File
	entries map[string]*io.SectionReader
}

func openArchive(p string) (*archiveSource, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	s := &archiveSource{f: f, entries: map[string]*io.SectionReader{}}
	// tar.Reader seeks over entry data when its reader is an io.Seeker, so
	// after Next the file offset is the start of that entry's data.
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: not an oci-archive: %w", p, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		off, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			f.Close()
			return nil, err
		}
		name := archivePath(hdr.Name)
		s.entries[name] = io.NewSectionReader(f, off, hdr.Size)
	}
	return s, nil
}

func (s *archiveSource) readFile(name string) ([]byte, error) {
	r, ok := s.entries[name]
	if !ok {
		return nil, fmt.Errorf("%s: no %s in archive: %w", s.f.Name(), name, fs.ErrNotExist)
	}
	if r.Size() > 64<<20 {
		return nil, fmt.Errorf("%s: %s: %d bytes is too large for JSON", s.f.Name(), name, r.Size())
	}
	return io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
}

func (s *archiveSource) Open(d digest.Digest) (io.ReadCloser, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	r, ok := s.entries["blobs/"+d.Algorithm().String()+"/"+d.Encoded()]
	if !ok {
		return nil, fmt.Errorf("%s: blob %s missing: %w", s.f.Name(), d, fs.ErrNotExist)
	}
	return io.NopCloser(io.NewSectionReader(r, 0, r.Size())), nil
}

func (*archiveSource) File(digest.Digest) string { return "" }
func (s *archiveSource) Close() error            { return s.f.Close() }

// Image is one single-platform image, read from a layout or archive.
type Image struct {
	Ref          Reference
	ManifestDesc v1.Descriptor
	Manifest     v1.Manifest
	// RawManifest is the manifest as stored: copies keep its digest.
	RawManifest []byte
	// RawConfig is the config as stored; Config is what layerfs reads of it.
	RawConfig []byte
	Config    v1.Image
	src       blobSource
}

// OpenImage reads the image ref names, for the host's platform.
func OpenImage(ref Reference) (*Image, error) {
	return Open(context.Background(), ref, OpenOptions{})
}

// OpenOptions say how to read an image.
type OpenOptions struct {
	// Platform picks the image of a multi-platform index; nil means the
	// host's.
	Platform *v1.Platform
	// Strict makes a registry pull by tag, without a digest, an error
	// instead of a warning.
	Strict bool
	// Insecure allows plain HTTP to a registry.
	Insecure bool
	Warn     func(msg string)
}

// Open reads the image ref names, in any transport. Bad references,
// missing paths, tags and platforms are bad input.
func Open(ctx context.Context, ref Reference, opts OpenOptions) (*Image, error) {
	var (
		src blobSource
		idx *v1.Index
		err error
	)
	switch ref.Transport {
	case TransportOCI:
		if st, err := os.Stat(filepath.Join(ref.Path, v1.ImageLayoutFile)); err != nil || st.IsDir() {
			return nil, inputerr.New("%s: %s is not an OCI image layout", ref, ref.Path)
		}
		src = layoutSource{ref.Path}
		idx, err = readIndexFile(filepath.Join(ref.Path, v1.ImageIndexFile))
	case TransportOCIArchive:
		a, aerr := openArchive(ref.Path)
		if errors.Is(aerr, fs.ErrNotExist) {
			return nil, inputerr.New("%s: %w", ref, aerr)
		}
		if aerr != nil {
			return nil, inputerr.Wrap(fmt.Errorf("%s: %w", ref, aerr))
		}
		src = a
		var data []byte
		if data, err = a.readFile(v1.ImageIndexFile); err == nil {
			idx = &v1.Index{}
			err = json.Unmarshal(data, idx)
		}
	case TransportDockerArchive:
		return openDockerArchive(ctx, ref, opts)
	case TransportDocker:
		return openRegistry(ctx, ref, opts)
	default:
		return nil, inputerr.New("%s: unknown transport %s", ref, ref.Transport)
	}
	if err != nil {
		src.Close()
		return nil, inputerr.Wrap(fmt.Errorf("%s: index: %w", ref, err))
	}
	img, err := resolve(ref, src, idx, opts.Platform)
	if err != nil {
		src.Close()
		return nil, err
	}
	return img, nil
}

// Close releases the image's source.
func (img *Image) Close() error { return img.src.Close() }

// FindTag returns the index entry whose ref.name is tag; with an empty tag,
// the index's only entry. Missing tags are bad input.
func FindTag(ref Reference, idx *v1.Index) (int, error) {
	if ref.Tag == "" {
		if len(idx.Manifests) != 1 {
			return -1, inputerr.New("%s: the layout holds %d images; name one with :TAG (tags: %s)", ref, len(idx.Manifests), tagList(idx))
		}
		return 0, nil
	}
	for i, m := range idx.Manifests {
		if m.Annotations[v1.AnnotationRefName] == ref.Tag {
			return i, nil
		}
	}
	return -1, inputerr.New("%s: no image tagged %q (tags: %s)", ref, ref.Tag, tagList(idx))
}

func tagList(idx *v1.Index) string {
	var tags []string
	for _, m := range idx.Manifests {
		if t := m.Annotations[v1.AnnotationRefName]; t != "" {
			tags = append(tags, t)
		}
	}
	if len(tags) == 0 {
		return "none"
	}
	slices.Sort(tags)
	return strings.Join(tags, ", ")
}

func resolve(ref Reference, src blobSource, idx *v1.Index, platform *v1.Platform) (*Image, error) {
	i, err := FindTag(ref, idx)
	if err != nil {
		return nil, err
	}
	desc := idx.Manifests[i]
	for depth := 0; ; depth++ {
		data, err := readBlob(src, desc)
		if err != nil {
			return nil, inputerr.Wrap(fmt.Errorf("%s: %w", ref, err))
		}
		switch desc.MediaType {
		case v1.MediaTypeImageIndex, mediaTypeDockerManifestList:
			var sub v1.Index
			if err := json.Unmarshal(data, &sub); err != nil || depth > 4 {
				return nil, inputerr.New("%s: bad image index %s", ref, desc.Digest)
			}
			if desc, err = pickPlatform(ref, &sub, platform); err != nil {
				return nil, err
			}
			continue
		case v1.MediaTypeImageManifest, mediaTypeDockerManifest:
		default:
			return nil, inputerr.New("%s: %s is a %q, not an image", ref, desc.Digest, desc.MediaType)
		}
		img := &Image{Ref: ref, ManifestDesc: desc, RawManifest: data, src: src}
		if err := json.Unmarshal(data, &img.Manifest); err != nil {
			return nil, inputerr.New("%s: manifest %s: %v", ref, desc.Digest, err)
		}
		// Blob digests name files: a malformed one ("sha256:../x") must
		// never reach a path.
		for _, b := range append([]v1.Descriptor{img.Manifest.Config}, img.Manifest.Layers...) {
			if err := b.Digest.Validate(); err != nil || b.Size < 0 {
				return nil, inputerr.New("%s: manifest %s lists a bad blob %q (size %d)", ref, desc.Digest, b.Digest, b.Size)
			}
		}
		if img.RawConfig, err = readBlob(src, img.Manifest.Config); err != nil {
			return nil, inputerr.Wrap(fmt.Errorf("%s: config: %w", ref, err))
		}
		if err := img.readConfig(); err != nil {
			return nil, err
		}
		return img, nil
	}
}

// readConfig reads RawConfig into Config and checks that it describes the
// manifest's layers: a diff_id for each, each a valid digest.
func (img *Image) readConfig() error {
	if err := json.Unmarshal(img.RawConfig, &img.Config); err != nil {
		return inputerr.New("%s: config %s: %v", img.Ref, img.Manifest.Config.Digest, err)
	}
	if n, m := len(img.Config.RootFS.DiffIDs), len(img.Manifest.Layers); n != m {
		return inputerr.New("%s: config lists %d diff_ids for %d layers", img.Ref, n, m)
	}
	for _, d := range img.Config.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return inputerr.New("%s: diff_id %q: %v", img.Ref, d, err)
		}
	}
	return nil
}

const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// pickPlatform chooses the image of a platform (the host's when nil)
// from a multi-platform index. A variant asked for must match; one not
// asked for takes the first image of the os and architecture.
func pickPlatform(ref Reference, idx *v1.Index, want *v1.Platform) (v1.Descriptor, error) {
	if want == nil {
		want = &v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	}
	var have []string
	for _, m := range idx.Manifests {
		if m.Platform == nil {
			continue
		}
		p := m.Platform
		if p.OS == want.OS && p.Architecture == want.Architecture && (want.Variant == "" || p.Variant == want.Variant) {
			return m, nil
		}
		have = append(have, FormatPlatform(p))
	}
	return v1.Descriptor{}, inputerr.New("%s: no %s image in the index (has %s)", ref, FormatPlatform(want), strings.Join(have, ", "))
}

// FormatPlatform writes os/arch[/variant].
func FormatPlatform(p *v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// ParsePlatform reads os/arch[/variant]. Debian's and Isar's arm names
// map as Isar's container fetcher maps them: armhf is arm/v7, armel
// arm/v6; a bare architecture means linux.
func ParsePlatform(s string) (*v1.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) == 1 {
		parts = []string{"linux", parts[0]}
	}
	if len(parts) > 3 || parts[0] == "" || parts[1] == "" || len(parts) == 3 && parts[2] == "" {
		return nil, inputerr.New("platform %q: want OS/ARCH[/VARIANT], e.g. linux/arm/v7", s)
	}
	p := &v1.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	switch p.Architecture {
	case "armhf":
		p.Architecture, p.Variant = "arm", "v7"
	case "armel":
		p.Architecture, p.Variant = "arm", "v6"
	case "x86_64":
		p.Architecture = "amd64"
	case "aarch64":
		p.Architecture = "arm64"
	}
	return p, nil
}

// readBlob reads a small blob whole and checks it against its descriptor.
func readBlob(src blobSource, desc v1.Descriptor) ([]byte, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob %q: %v", desc.Digest, err)
	}
	if desc.Size > 64<<20 {
		return nil, fmt.Errorf("blob %s: %d bytes is too large for JSON", desc.Digest, desc.Size)
	}
	r, err := src.Open(desc.Digest)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, desc.Size+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return nil, fmt.Errorf("blob %s does not match its descriptor", desc.Digest)
	}
	return data, nil
}

// OpenLayer opens layer i uncompressed. The caller must drain and close
// it; Close reports a diff_id that does not match the config.
func (img *Image) OpenLayer(i int) (io.ReadCloser, error) {
	desc := img.Manifest.Layers[i]
	r, err := img.src.Open(desc.Digest)
	if err != nil {
		return nil, err
	}
	lr, err := UncompressLayer(r, img.Config.RootFS.DiffIDs[i])
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	return lr, nil
}

// UncompressLayer reads the layer blob r (gzip, zstd or a plain tar, told
// by its magic) as the tar whose digest must be diffID. The caller must
// drain and close it; Close closes r and, after EOF, reports a tar that
// does not match diffID (wrapping ErrDiffIDMismatch).
func UncompressLayer(r io.ReadCloser, diffID digest.Digest) (io.ReadCloser, error) {
	if err := diffID.Validate(); err != nil {
		r.Close()
		return nil, inputerr.New("diff_id %q: %v", diffID, err)
	}
	u, _, err := compress.DecompressStream(r, compress.Gzip, compress.Zstd)
	if err != nil {
		r.Close()
		return nil, err
	}
	return &layerReader{r: u, raw: r, want: diffID, v: diffID.Verifier()}, nil
}

type layerReader struct {
	r    io.ReadCloser // r decompressed
	raw  io.Closer
	want digest.Digest
	v    digest.Verifier
	eof  bool
}

func (l *layerReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.v.Write(p[:n])
	if err == io.EOF {
		l.eof = true
	}
	return n, err
}

func (l *layerReader) Close() error {
	l.r.Close()
	l.raw.Close()
	if l.eof && !l.v.Verified() {
		return inputerr.New("layer with diff_id %s: %w", l.want, ErrDiffIDMismatch)
	}
	return nil
}
