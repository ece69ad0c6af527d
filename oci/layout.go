package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/durable"
	"github.com/layerfs/layerfs/internal/inputerr"
)

// Layout is an OCI image layout directory open for writing.
//
// Every file that names content is written to a temp file in its final
// directory, fsynced and renamed, and index.json goes last: a reader, or a
// crash at any point, sees the previous index with complete blobs, never a
// truncated blob under a valid digest. go-containerregistry's layout
// package rewrites index.json in place and creates digest-named blobs
// directly, so it is used for reading only.
//
// An open Layout holds an exclusive flock on its oci-layout file, which
// is never replaced, so concurrent writers queue instead of losing each
// other's index updates.
type Layout struct {
	dir   string
	lock  *os.File
	added []string // blobs this writer created, removed by Abort
}

const tmpPrefix = ".layerfs-tmp-"

// CreateLayout opens the layout at dir for writing, creating an empty one
// when dir does not exist.
func CreateLayout(dir string) (*Layout, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, err
	}
	marker := filepath.Join(dir, v1.ImageLayoutFile)
	if _, err := os.Stat(marker); errors.Is(err, fs.ErrNotExist) {
		data, _ := json.Marshal(v1.ImageLayout{Version: v1.ImageLayoutVersion})
		if err := writeFileAtomic(marker, data); err != nil {
			return nil, err
		}
	}
	f, err := os.Open(marker)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", marker, err)
	}
	l := &Layout{dir: dir, lock: f}
	l.removeStaleTemps()
	return l, nil
}

// removeStaleTemps deletes temp files of writers that died; under the
// lock no live writer can own one.
func (l *Layout) removeStaleTemps() {
	for _, d := range []string{l.dir, filepath.Join(l.dir, "blobs", "sha256")} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), tmpPrefix) {
				os.Remove(filepath.Join(d, e.Name()))
			}
		}
	}
}

// Dir is the layout's directory.
func (l *Layout) Dir() string { return l.dir }

// Close releases the lock.
func (l *Layout) Close() error { return l.lock.Close() }

// Abort removes the blobs this writer added, for a commit that failed
// before its index was written.
func (l *Layout) Abort() {
	for _, p := range l.added {
		os.Remove(p)
	}
	l.added = nil
}

// BlobPath is where the blob with digest d lives.
func (l *Layout) BlobPath(d digest.Digest) string {
	return filepath.Join(l.dir, "blobs", d.Algorithm().String(), d.Encoded())
}

// HasBlob reports whether a complete blob with digest d is present.
func (l *Layout) HasBlob(d digest.Digest) bool {
	_, err := os.Stat(l.BlobPath(d))
	return err == nil
}

// WriteBlob streams a blob whose digest is only known once written: write
// fills a temp file and returns the digest, which then names the file.
func (l *Layout) WriteBlob(write func(w io.Writer) (digest.Digest, error)) (digest.Digest, error) {
	dir := filepath.Join(l.dir, "blobs", "sha256")
	f, err := os.CreateTemp(dir, tmpPrefix)
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return "", err
	}
	d, err := write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	if err := l.place(tmp, d); err != nil {
		return "", err
	}
	return d, nil
}

// PutBlob stores a small blob (a config or manifest) and describes it.
func (l *Layout) PutBlob(mediaType string, data []byte) (v1.Descriptor, error) {
	d := digest.FromBytes(data)
	desc := v1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
	if l.HasBlob(d) {
		return desc, nil
	}
	_, err := l.WriteBlob(func(w io.Writer) (digest.Digest, error) {
		_, err := w.Write(data)
		return d, err
	})
	return desc, err
}

// CopyBlob makes the blob d, read from open, present in the layout: by a
// hardlink when src names a file on the same filesystem, else by a copy
// whose digest is verified.
func (l *Layout) CopyBlob(d digest.Digest, src string, open func() (io.ReadCloser, error)) error {
	if err := d.Validate(); err != nil {
		return inputerr.New("blob %q: %v", d, err)
	}
	if l.HasBlob(d) {
		return nil
	}
	if src != "" {
		if err := os.Link(src, l.BlobPath(d)); err == nil {
			l.added = append(l.added, l.BlobPath(d))
			return durable.SyncDir(filepath.Dir(l.BlobPath(d)))
		}
	}
	_, err := l.WriteBlob(func(w io.Writer) (digest.Digest, error) {
		r, err := open()
		if err != nil {
			return "", err
		}
		defer r.Close()
		v := d.Verifier()
		if _, err := io.Copy(io.MultiWriter(w, v), r); err != nil {
			return "", err
		}
		if !v.Verified() {
			return "", fmt.Errorf("blob %s: content does not match its digest", d)
		}
		return d, nil
	})
	return err
}

func (l *Layout) place(tmp string, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return err
	}
	final := l.BlobPath(d)
	if _, err := os.Stat(final); err == nil {
		return nil // identical content is already there
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	l.added = append(l.added, final)
	return durable.SyncDir(filepath.Dir(final))
}

// ReadIndex reads index.json; a layout without one has an empty index.
func (l *Layout) ReadIndex() (*v1.Index, error) {
	return readIndexFile(filepath.Join(l.dir, v1.ImageIndexFile))
}

func readIndexFile(p string) (*v1.Index, error) {
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return &v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex}, nil
	}
	if err != nil {
		return nil, err
	}
	var idx v1.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return &idx, nil
}

// WriteIndex replaces index.json atomically. It is the commit point of
// every change to the layout; after it, the added blobs belong to it.
func (l *Layout) WriteIndex(idx *v1.Index) error {
	idx.SchemaVersion = 2
	idx.MediaType = v1.MediaTypeImageIndex
	data, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(l.dir, v1.ImageIndexFile), data); err != nil {
		return err
	}
	l.added = nil
	return nil
}

// writeFileAtomic replaces p with data: temp file, fsync, rename, fsync of
// the directory.
func writeFileAtomic(p string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(p), tmpPrefix)
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), p); err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(p))
}
