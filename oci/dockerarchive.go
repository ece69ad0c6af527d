package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/compress"
	"github.com/layerfs/layerfs/internal/ctxio"
	"github.com/layerfs/layerfs/internal/durable"
	"github.com/layerfs/layerfs/internal/inputerr"
)

// A docker archive (`docker save`, `podman save`, skopeo's docker-archive:)
// is a tar holding manifest.json, a list of {Config, RepoTags, Layers}
// whose Config and Layers name files in the tar. It has no manifest of its
// own and its layers are usually uncompressed tars. An *Image must
// describe real blobs, so reading one synthesizes an OCI manifest over the
// archive's files as they are: an uncompressed layer is the blob
// application/vnd.oci.image.layer.v1.tar whose digest is its diff_id (so
// nothing is recompressed, OpenLayer's diff_id check is the digest check,
// and copies to oci: keep the bytes); a compressed one (docker 25+ with the
// containerd store saves the registry's blobs) is described as it is. The
// synthesized manifest is deterministic, so the same archive always reads
// as the same manifest digest, and it is what writeDockerArchive returns.

// dockerArchiveEntry is one image of manifest.json.
type dockerArchiveEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

const dockerArchiveManifest = "manifest.json"

// dockerArchiveSource reads the files of a docker archive in place, by
// offset. A compressed archive (`docker save | gzip`) is decompressed
// once into an unlinked temp file first.
type dockerArchiveSource struct {
	f       *os.File
	name    string // the archive, for messages
	files   map[string]*io.SectionReader
	links   map[string]string // symlink entries: older `docker save` links duplicate layers
	blobs   map[digest.Digest]*io.SectionReader
	closeFn func() error
}

func (s *dockerArchiveSource) Open(d digest.Digest) (io.ReadCloser, error) {
	r, ok := s.blobs[d]
	if !ok {
		return nil, fmt.Errorf("%s: blob %s missing: %w", s.name, d, fs.ErrNotExist)
	}
	return io.NopCloser(io.NewSectionReader(r, 0, r.Size())), nil
}

func (*dockerArchiveSource) File(digest.Digest) string { return "" }
func (s *dockerArchiveSource) Close() error            { return s.f.Close() }

// file returns the archive member name, following symlinks within the
// archive (relative to the link's directory, as tar extraction would).
func (s *dockerArchiveSource) file(name string) (*io.SectionReader, error) {
	name = archivePath(name)
	for range 16 {
		if r, ok := s.files[name]; ok {
			return r, nil
		}
		target, ok := s.links[name]
		if !ok {
			return nil, fmt.Errorf("no %s in the archive: %w", name, fs.ErrNotExist)
		}
		if path.IsAbs(target) {
			name = archivePath(target)
		} else {
			name = archivePath(path.Join(path.Dir(name), target))
		}
	}
	return nil, fmt.Errorf("%s: too many levels of symbolic links in the archive", name)
}

func (s *dockerArchiveSource) readFile(name string, limit int64) ([]byte, error) {
	r, err := s.file(name)
	if err != nil {
		return nil, err
	}
	if r.Size() > limit {
		return nil, fmt.Errorf("%s: %d bytes is too large", name, r.Size())
	}
	return io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
}

func openDockerArchiveFile(ctx context.Context, p string) (*dockerArchiveSource, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	if c := compress.DetectReaderAt(f); c == compress.Gzip || c == compress.Zstd {
		plain, err := decompressToTemp(ctx, f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: decompress: %w", p, err)
		}
		f = plain
	}
	s := &dockerArchiveSource{f: f, name: p, files: map[string]*io.SectionReader{}, links: map[string]string{}, blobs: map[digest.Digest]*io.SectionReader{}}
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
			return nil, inputerr.New("%s: not a docker archive: %v", p, err)
		}
		name := archivePath(hdr.Name)
		switch hdr.Typeflag {
		case tar.TypeReg:
			off, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				f.Close()
				return nil, err
			}
			s.files[name] = io.NewSectionReader(f, off, hdr.Size)
			delete(s.links, name)
		case tar.TypeSymlink:
			s.links[name] = hdr.Linkname
			delete(s.files, name)
		case tar.TypeLink:
			s.links[name] = "/" + archivePath(hdr.Linkname)
			delete(s.files, name)
		}
	}
	return s, nil
}

// decompressToTemp writes the decompressed r to a temp file that is
// unlinked at once: nothing is left behind however the process ends.
func decompressToTemp(ctx context.Context, r io.Reader) (*os.File, error) {
	u, _, err := compress.DecompressStream(r, compress.Gzip, compress.Zstd)
	if err != nil {
		return nil, err
	}
	defer u.Close()
	f, err := os.CreateTemp("", "layerfs-docker-archive-")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	if _, err := io.Copy(f, ctxio.Reader(ctx, u)); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// openDockerArchive reads an image from a `docker save` archive. With
// NAME:TAG the image of manifest.json that carries that tag is read, else
// the archive's only image. Archives without manifest.json (docker before
// 1.10) are refused.
func openDockerArchive(ctx context.Context, ref Reference, opts OpenOptions) (*Image, error) {
	s, err := openDockerArchiveFile(ctx, ref.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, inputerr.New("%s: %s does not exist", ref, ref.Path)
	}
	if err != nil {
		return nil, inputerr.Wrap(fmt.Errorf("%s: %w", ref, err))
	}
	img, err := s.image(ctx, ref)
	if err != nil {
		s.Close()
		return nil, err
	}
	return img, nil
}

func (s *dockerArchiveSource) image(ctx context.Context, ref Reference) (*Image, error) {
	data, err := s.readFile(dockerArchiveManifest, 64<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, inputerr.New("%s: not a docker archive: no %s (archives of docker before 1.10 are not read)", ref, dockerArchiveManifest)
	}
	if err != nil {
		return nil, inputerr.New("%s: %v", ref, err)
	}
	var entries []dockerArchiveEntry
	if err := json.Unmarshal(data, &entries); err != nil {
		return nil, inputerr.New("%s: %s: %v", ref, dockerArchiveManifest, err)
	}
	e, err := pickDockerArchiveEntry(ref, entries)
	if err != nil {
		return nil, err
	}
	img := &Image{Ref: ref, src: s}
	if img.RawConfig, err = s.readFile(e.Config, 64<<20); err != nil {
		return nil, inputerr.New("%s: config: %v", ref, err)
	}
	if err := json.Unmarshal(img.RawConfig, &img.Config); err != nil {
		return nil, inputerr.New("%s: config %s: %v", ref, e.Config, err)
	}
	diffIDs := img.Config.RootFS.DiffIDs
	if len(diffIDs) != len(e.Layers) {
		return nil, inputerr.New("%s: config lists %d diff_ids for %d layers", ref, len(diffIDs), len(e.Layers))
	}
	cfg := v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromBytes(img.RawConfig), Size: int64(len(img.RawConfig))}
	s.blobs[cfg.Digest] = io.NewSectionReader(bytes.NewReader(img.RawConfig), 0, cfg.Size)
	layers := make([]v1.Descriptor, len(e.Layers))
	for i, name := range e.Layers {
		if err := diffIDs[i].Validate(); err != nil {
			return nil, inputerr.New("%s: diff_id %q: %v", ref, diffIDs[i], err)
		}
		r, err := s.file(name)
		if err != nil {
			return nil, inputerr.New("%s: layer %d: %v", ref, i+1, err)
		}
		if layers[i], err = describeArchiveLayer(ctx, name, r, diffIDs[i]); err != nil {
			return nil, inputerr.Wrap(fmt.Errorf("%s: layer %d (%s): %w", ref, i+1, name, err))
		}
		s.blobs[layers[i].Digest] = r
	}
	img.Manifest, img.RawManifest, err = synthesizeManifest(cfg, layers)
	if err != nil {
		return nil, err
	}
	img.ManifestDesc = v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(img.RawManifest), Size: int64(len(img.RawManifest))}
	if img.Config.OS != "" {
		img.ManifestDesc.Platform = &v1.Platform{OS: img.Config.OS, Architecture: img.Config.Architecture, Variant: img.Config.Variant}
	}
	return img, nil
}

// pickDockerArchiveEntry finds the image named by ref.Tag, matching names
// as docker does: "busybox:1" is docker.io/library/busybox:1.
func pickDockerArchiveEntry(ref Reference, entries []dockerArchiveEntry) (dockerArchiveEntry, error) {
	var tags []string
	for _, e := range entries {
		tags = append(tags, e.RepoTags...)
	}
	slices.Sort(tags)
	have := strings.Join(tags, ", ")
	if have == "" {
		have = "none"
	}
	if ref.Tag == "" {
		if len(entries) != 1 {
			return dockerArchiveEntry{}, inputerr.New("%s: the archive holds %d images; name one with :NAME:TAG (tags: %s)", ref, len(entries), have)
		}
		return entries[0], nil
	}
	for _, match := range []func(string) bool{
		func(t string) bool { return t == ref.Tag },
		func(t string) bool { return normalizeDockerName(t) == normalizeDockerName(ref.Tag) },
	} {
		for _, e := range entries {
			if slices.ContainsFunc(e.RepoTags, match) {
				return e, nil
			}
		}
	}
	return dockerArchiveEntry{}, inputerr.New("%s: no image tagged %q in the archive (tags: %s)", ref, ref.Tag, have)
}

// normalizeDockerName spells NAME:TAG the long way docker resolves it.
func normalizeDockerName(s string) string {
	domain, rest, ok := strings.Cut(s, "/")
	if !ok || !strings.ContainsAny(domain, ".:") && domain != "localhost" {
		domain, rest = "docker.io", s
	}
	if domain == "index.docker.io" {
		domain = "docker.io"
	}
	if domain == "docker.io" && !strings.Contains(rest, "/") {
		rest = "library/" + rest
	}
	return domain + "/" + rest
}

// describeArchiveLayer says what blob an archive's layer file is. The
// digest of an uncompressed one is its diff_id, checked by whoever reads
// it (OpenLayer, CopyBlob); a compressed one is hashed, unless its name
// already is its digest (docker 25+: blobs/sha256/HEX), also checked on
// every read.
func describeArchiveLayer(ctx context.Context, name string, r *io.SectionReader, diffID digest.Digest) (v1.Descriptor, error) {
	desc := v1.Descriptor{Size: r.Size()}
	switch compress.DetectReaderAt(r) {
	case compress.Gzip:
		desc.MediaType = v1.MediaTypeImageLayerGzip
	case compress.Zstd:
		desc.MediaType = v1.MediaTypeImageLayerZstd
	default:
		desc.MediaType, desc.Digest = v1.MediaTypeImageLayer, diffID
		return desc, nil
	}
	dir, hex := path.Split(archivePath(name))
	if d := digest.NewDigestFromEncoded(digest.Algorithm(path.Base(dir)), hex); path.Dir(dir) == "blobs" && d.Validate() == nil {
		desc.Digest = d
		return desc, nil
	}
	h := digest.Canonical.Digester()
	if _, err := io.Copy(h.Hash(), ctxio.Reader(ctx, io.NewSectionReader(r, 0, r.Size()))); err != nil {
		return desc, err
	}
	desc.Digest = h.Digest()
	return desc, nil
}

// synthesizeManifest is the OCI manifest of a config and layers.
func synthesizeManifest(cfg v1.Descriptor, layers []v1.Descriptor) (v1.Manifest, []byte, error) {
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: layers}
	raw, err := json.Marshal(m)
	return m, raw, err
}

// writeDockerArchive writes an image as a `docker save` archive that
// `docker load` and `podman load` accept: manifest.json naming the config
// (HEX.json) and the layers as uncompressed tars (DIFFID.tar), as skopeo
// writes them. Compressed layers are decompressed on the way, and each
// diff_id is checked: uncompressed is what every version of docker and
// podman loads. RepoTags holds dst's NAME:TAG, else nothing (the loaded
// image is then untagged, as with skopeo). The archive replaces dst's
// file atomically. The descriptor returned is the manifest that reading
// the archive back gives.
func writeDockerArchive(ctx context.Context, img *Image, dst Reference) (mdesc v1.Descriptor, err error) {
	w, err := createArchive(dst)
	if err != nil {
		return mdesc, err
	}
	defer func() {
		if err != nil {
			w.abort()
		}
	}()
	cfg := img.Manifest.Config
	cfg.MediaType = v1.MediaTypeImageConfig
	cfgName := cfg.Digest.Encoded() + ".json"
	if err := w.addBytes(cfgName, img.RawConfig); err != nil {
		return mdesc, err
	}
	entry := dockerArchiveEntry{Config: cfgName, RepoTags: []string{}}
	if dst.Tag != "" {
		entry.RepoTags = append(entry.RepoTags, dst.Tag)
	}
	written := map[digest.Digest]int64{}
	var layers []v1.Descriptor
	for i := range img.Manifest.Layers {
		diffID := img.Config.RootFS.DiffIDs[i]
		name := diffID.Encoded() + ".tar"
		size, ok := written[diffID]
		if !ok {
			if size, err = w.addLayer(ctx, img, i, name); err != nil {
				return mdesc, err
			}
			written[diffID] = size
		}
		entry.Layers = append(entry.Layers, name)
		layers = append(layers, v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: diffID, Size: size})
	}
	manifest, err := json.Marshal([]dockerArchiveEntry{entry})
	if err != nil {
		return mdesc, err
	}
	if err := w.addBytes(dockerArchiveManifest, manifest); err != nil {
		return mdesc, err
	}
	if err := w.commit(); err != nil {
		return mdesc, fmt.Errorf("%s: %w", dst, err)
	}
	_, raw, err := synthesizeManifest(cfg, layers)
	if err != nil {
		return mdesc, err
	}
	mdesc = v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(raw), Size: int64(len(raw))}
	if img.Config.OS != "" {
		mdesc.Platform = &v1.Platform{OS: img.Config.OS, Architecture: img.Config.Architecture, Variant: img.Config.Variant}
	}
	return mdesc, nil
}

// addLayer writes layer i of img uncompressed and checks its diff_id.
func (w *archiveWriter) addLayer(ctx context.Context, img *Image, i int, name string) (int64, error) {
	rc, err := img.OpenLayer(i)
	if err != nil {
		return 0, fmt.Errorf("%s: layer %d (%s): %w", img.Ref, i+1, img.Manifest.Layers[i].Digest, err)
	}
	n, err := w.addStream(ctx, name, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("%s: layer %d (%s): %w", img.Ref, i+1, img.Manifest.Layers[i].Digest, err)
	}
	return n, nil
}

// writeOCIArchive writes an image as an oci-archive: (a tar of an OCI
// layout, as skopeo reads and writes it) with the image tagged dst.Tag,
// default latest. The archive replaces dst's file atomically; blobs keep
// their bytes, so the manifest digest stays.
func writeOCIArchive(ctx context.Context, img *Image, dst Reference) (mdesc v1.Descriptor, err error) {
	tag := dst.Tag
	if tag == "" {
		tag = "latest"
	}
	w, err := createArchive(dst)
	if err != nil {
		return mdesc, err
	}
	defer func() {
		if err != nil {
			w.abort()
		}
	}()
	layout, _ := json.Marshal(v1.ImageLayout{Version: v1.ImageLayoutVersion})
	if err := w.addBytes(v1.ImageLayoutFile, layout); err != nil {
		return mdesc, err
	}
	if err := w.addDir("blobs/"); err != nil {
		return mdesc, err
	}
	dirs := map[string]bool{}
	blobDir := func(d digest.Digest) (string, error) {
		if err := d.Validate(); err != nil {
			return "", fmt.Errorf("%s: blob %q: %w", img.Ref, d, err)
		}
		dir := "blobs/" + d.Algorithm().String() + "/"
		if !dirs[dir] {
			if err := w.addDir(dir); err != nil {
				return "", err
			}
			dirs[dir] = true
		}
		return dir, nil
	}
	seen := map[digest.Digest]bool{}
	for _, b := range append([]v1.Descriptor{img.Manifest.Config}, img.Manifest.Layers...) {
		if seen[b.Digest] {
			continue
		}
		seen[b.Digest] = true
		dir, err := blobDir(b.Digest)
		if err != nil {
			return mdesc, err
		}
		if err := w.addBlob(ctx, dir+b.Digest.Encoded(), b, img.src.Open); err != nil {
			return mdesc, fmt.Errorf("copy %s from %s: %w", b.Digest, img.Ref, err)
		}
	}
	// The manifest is written as held: a source need not store it as a
	// blob (a docker archive's is synthesized).
	md := img.ManifestDesc.Digest
	if md.Validate() != nil || md.Algorithm().FromBytes(img.RawManifest) != md {
		return mdesc, fmt.Errorf("%s: manifest does not match its digest %s", img.Ref, md)
	}
	dir, err := blobDir(md)
	if err != nil {
		return mdesc, err
	}
	if !seen[md] {
		if err := w.addBytes(dir+md.Encoded(), img.RawManifest); err != nil {
			return mdesc, err
		}
	}
	mdesc = v1.Descriptor{MediaType: img.ManifestDesc.MediaType, Digest: md, Size: int64(len(img.RawManifest))}
	if mdesc.MediaType == "" {
		mdesc.MediaType = v1.MediaTypeImageManifest
	}
	if img.Config.OS != "" {
		mdesc.Platform = &v1.Platform{OS: img.Config.OS, Architecture: img.Config.Architecture, Variant: img.Config.Variant}
	}
	mdesc.Annotations = map[string]string{v1.AnnotationRefName: tag}
	idx, err := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{mdesc}})
	if err != nil {
		return mdesc, err
	}
	if err := w.addBytes(v1.ImageIndexFile, idx); err != nil {
		return mdesc, err
	}
	if err := w.commit(); err != nil {
		return mdesc, fmt.Errorf("%s: %w", dst, err)
	}
	return mdesc, nil
}

// archiveWriter writes a tar to a temp file beside its destination, which
// commit fsyncs and renames into place (DESIGN.md "Crash safety"): a
// reader sees the old archive or the whole new one, never a torn one.
// Entries are reproducible: fixed dates, owners and modes.
//
// It writes the tar framing itself rather than through tar.Writer so that
// an entry whose size is only known once written (a layer decompressed on
// the way) needs neither a second pass nor a spool file: a header block is
// reserved, the data streamed, and the header filled in afterwards.
type archiveWriter struct {
	f     *os.File
	final string
	off   int64
}

// archiveTempPrefix names the temp files of archive writers. Each holds
// an flock on its temp file while it lives, so the sweep of dead ones is
// right across pid namespaces.
const archiveTempPrefix = ".layerfs-archive-"

func createArchive(dst Reference) (*archiveWriter, error) {
	final, err := filepath.Abs(dst.Path)
	if err != nil {
		return nil, inputerr.New("%s: %v", dst, err)
	}
	if st, err := os.Stat(final); err == nil && !st.Mode().IsRegular() {
		return nil, inputerr.New("%s: %s exists and is not a regular file", dst, dst.Path)
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", dst, err)
	}
	sweepArchiveTemps(dir)
	for {
		f, err := os.CreateTemp(dir, archiveTempPrefix)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dst, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			os.Remove(f.Name())
			return nil, fmt.Errorf("%s: lock %s: %w", dst, f.Name(), err)
		}
		// A sweep may have taken the name between create and lock.
		if archiveSameFile(f, f.Name()) {
			if err := f.Chmod(0o644); err != nil {
				f.Close()
				os.Remove(f.Name())
				return nil, err
			}
			return &archiveWriter{f: f, final: final}, nil
		}
		f.Close()
	}
}

func archiveSameFile(f *os.File, p string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Lstat(p)
	return err == nil && os.SameFile(a, b)
}

// sweepArchiveTemps removes the temp files of archive writers that died:
// those whose lock can be taken.
func sweepArchiveTemps(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), archiveTempPrefix) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil && archiveSameFile(f, p) {
			os.Remove(p)
		}
		f.Close()
	}
}

const maxUstarSize = 1<<33 - 1

// tarHeaderBlock encodes one tar header block (always one: names are short, and
// sizes past the ustar limit use GNU base-256).
func tarHeaderBlock(name string, typ byte, size int64) ([]byte, error) {
	mode := int64(0o644)
	if typ == tar.TypeDir {
		mode = 0o755
	}
	h := &tar.Header{Name: name, Typeflag: typ, Mode: mode, Size: size, ModTime: time.Unix(0, 0), Format: tar.FormatUSTAR}
	if size > maxUstarSize {
		h.Format = tar.FormatGNU
	}
	var buf bytes.Buffer
	if err := tar.NewWriter(&buf).WriteHeader(h); err != nil {
		return nil, fmt.Errorf("tar header of %s: %w", name, err)
	}
	if buf.Len() != 512 {
		return nil, fmt.Errorf("tar header of %s: %d bytes, want one block", name, buf.Len())
	}
	return buf.Bytes(), nil
}

func (w *archiveWriter) write(p []byte) error {
	n, err := w.f.Write(p)
	w.off += int64(n)
	return err
}

func (w *archiveWriter) pad() error {
	if r := w.off % 512; r != 0 {
		return w.write(make([]byte, 512-r))
	}
	return nil
}

func (w *archiveWriter) addDir(name string) error {
	h, err := tarHeaderBlock(name, tar.TypeDir, 0)
	if err != nil {
		return err
	}
	return w.write(h)
}

func (w *archiveWriter) addBytes(name string, data []byte) error {
	h, err := tarHeaderBlock(name, tar.TypeReg, int64(len(data)))
	if err != nil {
		return err
	}
	if err := w.write(h); err != nil {
		return err
	}
	if err := w.write(data); err != nil {
		return err
	}
	return w.pad()
}

// addBlob copies blob b, checking its size and digest.
func (w *archiveWriter) addBlob(ctx context.Context, name string, b v1.Descriptor, open func(digest.Digest) (io.ReadCloser, error)) error {
	h, err := tarHeaderBlock(name, tar.TypeReg, b.Size)
	if err != nil {
		return err
	}
	r, err := open(b.Digest)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := w.write(h); err != nil {
		return err
	}
	v := b.Digest.Verifier()
	n, err := io.CopyBuffer(io.MultiWriter(archiveWriteFunc(w.write), v), ctxio.Reader(ctx, io.LimitReader(r, b.Size+1)), make([]byte, 1<<20))
	if err != nil {
		return err
	}
	if n != b.Size || !v.Verified() {
		return fmt.Errorf("blob %s: content does not match its descriptor", b.Digest)
	}
	return w.pad()
}

// addStream writes r whole under name; the header goes in last.
func (w *archiveWriter) addStream(ctx context.Context, name string, r io.Reader) (int64, error) {
	start := w.off
	if err := w.write(make([]byte, 512)); err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(archiveWriteFunc(w.write), ctxio.Reader(ctx, r), make([]byte, 1<<20))
	if err != nil {
		return 0, err
	}
	h, err := tarHeaderBlock(name, tar.TypeReg, n)
	if err != nil {
		return 0, err
	}
	if _, err := w.f.WriteAt(h, start); err != nil {
		return 0, err
	}
	return n, w.pad()
}

type archiveWriteFunc func([]byte) error

func (f archiveWriteFunc) Write(p []byte) (int, error) {
	if err := f(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// commit ends the tar, syncs it and renames it into place. On error the
// caller aborts.
func (w *archiveWriter) commit() error {
	if err := w.write(make([]byte, 1024)); err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil {
		return err
	}
	if err := os.Rename(w.f.Name(), w.final); err != nil {
		return err
	}
	w.f.Close()
	return durable.SyncDir(filepath.Dir(w.final))
}

func (w *archiveWriter) abort() {
	os.Remove(w.f.Name())
	w.f.Close()
}
