package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// entrySchema is the version of entry.json this package writes; readers
// refuse others rather than misread them.
const entrySchema = 1

// Info is an entry's entry.json: every input of its key and what the
// build produced.
type Info struct {
	Key    string `json:"key"`              // the full key, 64 hex digits
	Parent string `json:"parent,omitempty"` // the parent layer's key; "" for the first layer
	Name   string `json:"name"`             // the layer name ("base" for base-image layers)
	Type   string `json:"type"`             // packages, directories, files, host, base, single
	// Packages are sorted by Insert.
	Packages []string          `json:"packages,omitempty"`
	Versions map[string]string `json:"versions,omitempty"`
	// Inputs holds every other key input by name: install command, arch,
	// compression, mode, exclude, source_date_epoch, tar rules, content
	// hash, ...
	Inputs  map[string]string `json:"inputs,omitempty"`
	Machine string            `json:"machine,omitempty"`
	// KeyInputs is the canonical JSON whose sha256 is Key, for a layer
	// built from a spec ("" for base-image layers, keyed by diff_id): the
	// shared tier's artifact carries it as its config, and a host that
	// pulls an entry checks it against its own.
	KeyInputs json.RawMessage `json:"key_inputs,omitempty"`
	DiffID    digest.Digest   `json:"diff_id"`
	Digest    digest.Digest   `json:"digest"` // of the blob
	MediaType string          `json:"media_type,omitempty"`
	Size      int64           `json:"size"`    // of the blob
	Created   time.Time       `json:"created"` // set by Insert when zero
	// Tree is TreeDigest of rootfs/ at insert time, set by Insert.
	Tree digest.Digest `json:"tree"`
	// TreeTrusted records that Tree covers trusted.* xattrs (overlay
	// markers of a root build). A process that cannot see them gets
	// another digest, so Verify does not judge the rootfs from there.
	TreeTrusted bool `json:"tree_trusted,omitempty"`
}

type entryJSON struct {
	Schema int `json:"schema"`
	Info
}

// Entry is one cached layer.
type Entry struct {
	Dir      string    `json:"dir"` // CACHE/<key16>-<name>
	Info     Info      `json:"info"`
	LastUsed time.Time `json:"last_used"` // mtime of .used, touched by Lookup
	// DiskSize is the space the entry's files take, in bytes (List only).
	DiskSize int64 `json:"disk_size"`
	// Err says why the entry is unusable (List and Entries only; nil for
	// a sound one). Of such an entry's Info only Key, which then holds
	// just the 16 digits of its dir name, and Name are known.
	Err error `json:"-"`
}

// MarshalJSON adds Err as a string, "error".
func (e *Entry) MarshalJSON() ([]byte, error) {
	type plain Entry // without this method
	var msg string
	if e.Err != nil {
		msg = e.Err.Error()
	}
	return json.Marshal(struct {
		*plain
		Error string `json:"error,omitempty"`
	}{(*plain)(e), msg})
}

// Name is the entry's dir name, <key16>-<layer name>.
func (e *Entry) Name() string { return filepath.Base(e.Dir) }

// Rootfs is the mountable layer dir.
func (e *Entry) Rootfs() string { return filepath.Join(e.Dir, rootfsDir) }

// Blob is the compressed layer blob, to be hardlinked (or copied) into
// image layouts; never written to.
func (e *Entry) Blob() string { return filepath.Join(e.Dir, blobFile) }

// errGone is wrapped by errors about an entry that was removed (or
// replaced) since it was looked up.
var errGone = fmt.Errorf("removed since it was looked up: %w", fs.ErrNotExist)

func corruptf(dir, format string, args ...any) error {
	return fmt.Errorf("cache entry %s: %w: %s", dir, ErrCorrupt, fmt.Sprintf(format, args...))
}

// readEntry reads the entry at dir. The error wraps errGone when dir does
// not exist, ErrCorrupt when its files do not make an entry, and is
// returned with an Entry that has what could be learnt from dir's name.
func readEntry(dir string) (*Entry, error) {
	key16, name, _ := splitEntryName(filepath.Base(dir))
	e := &Entry{Dir: dir, Info: Info{Key: key16, Name: name}}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return e, errGone
		}
		return e, fmt.Errorf("cache entry %s: %w", dir, err)
	}
	e.LastUsed = time.Unix(st.Mtim.Unix())
	if fi, err := os.Lstat(filepath.Join(dir, usedFile)); err == nil {
		e.LastUsed = fi.ModTime()
	}
	data, err := os.ReadFile(filepath.Join(dir, entryFile))
	if errors.Is(err, fs.ErrNotExist) {
		return e, corruptf(dir, "no %s", entryFile)
	}
	if err != nil {
		return e, fmt.Errorf("cache entry %s: %w", dir, err)
	}
	var f entryJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return e, corruptf(dir, "%s: %v", entryFile, err)
	}
	if f.Schema != entrySchema {
		return e, fmt.Errorf("cache entry %s: %s has schema %d, this layerfs reads %d", dir, entryFile, f.Schema, entrySchema)
	}
	in := f.Info
	if len(in.KeyInputs) > 0 {
		// entry.json is indented, and its key inputs with it: compacted,
		// they are again the bytes the key hashes.
		var buf bytes.Buffer
		if err := json.Compact(&buf, in.KeyInputs); err != nil || KeyOf(buf.Bytes()) != in.Key {
			return e, corruptf(dir, "%s: key_inputs do not hash to the key", entryFile)
		}
		in.KeyInputs = buf.Bytes()
	}
	switch {
	case checkKey(in.Key) != nil || in.Key[:16] != key16:
		return e, corruptf(dir, "%s: key %q does not match the dir name", entryFile, in.Key)
	case in.Name != name:
		return e, corruptf(dir, "%s: name %q does not match the dir name", entryFile, in.Name)
	case in.Digest.Validate() != nil || in.DiffID.Validate() != nil || in.Tree.Validate() != nil:
		return e, corruptf(dir, "%s: a digest is missing or malformed", entryFile)
	}
	if fi, err := os.Lstat(filepath.Join(dir, rootfsDir)); err != nil || !fi.IsDir() {
		return e, corruptf(dir, "no %s/ dir", rootfsDir)
	}
	if fi, err := os.Lstat(filepath.Join(dir, blobFile)); err != nil || !fi.Mode().IsRegular() {
		return e, corruptf(dir, "no %s file", blobFile)
	}
	e.Info = in
	return e, nil
}

// Lookup returns the entry of key and layer name, or nil, nil on a miss.
// An entry under the same dir name with another full key (a key16
// collision) is a miss, and so is a corrupt one (Insert moves it aside).
// A hit is marked used now, for Prune's LRU order.
func (c *Cache) Lookup(key, name string) (*Entry, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	if err := checkName(name); err != nil {
		return nil, err
	}
	e, err := readEntry(c.entryDir(key, name))
	switch {
	case errors.Is(err, errGone), errors.Is(err, ErrCorrupt):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("cache lookup: %w", err)
	case e.Info.Key != key:
		return nil, nil
	}
	e.LastUsed = touchUsed(e.Dir)
	return e, nil
}

// touchUsed marks an entry used now. Best effort: a read-only cache is
// still usable, it just ages by insertion time.
func touchUsed(dir string) time.Time {
	now := time.Now()
	p := filepath.Join(dir, usedFile)
	if err := os.Chtimes(p, now, now); errors.Is(err, fs.ErrNotExist) {
		if f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644); err == nil {
			f.Close()
			os.Chtimes(p, now, now)
		}
	}
	return now
}

// Use marks the entry in use by a live build or mount until release is
// called (or the process ends): Prune, Remove and Verify's quarantine
// leave it alone meanwhile. The error wraps fs.ErrNotExist when the entry
// was removed since it was looked up; treat that as a miss.
func (e *Entry) Use() (release func(), err error) {
	f, err := os.Open(e.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("cache entry %s: %w", e.Dir, errGone)
	}
	if err != nil {
		return nil, fmt.Errorf("cache entry %s: %w", e.Dir, err)
	}
	// Blocking is fine: removers hold their exclusive lock for one rename.
	if err := flock(f, unix.LOCK_SH); err != nil {
		f.Close()
		return nil, fmt.Errorf("cache entry %s: lock: %w", e.Dir, err)
	}
	// The entry may have been removed, and even rebuilt under the same
	// name (inode numbers get reused): what is there now must be what the
	// caller read, or its Info would describe another blob.
	now, err := readEntry(e.Dir)
	if err != nil || !sameFile(f, e.Dir) || !sameBuild(now.Info, e.Info) {
		f.Close()
		return nil, fmt.Errorf("cache entry %s: %w", e.Dir, errGone)
	}
	return sync.OnceFunc(func() { f.Close() }), nil
}

// sameBuild reports whether two entry.jsons describe the same build
// result.
func sameBuild(a, b Info) bool {
	return a.Key == b.Key && a.Digest == b.Digest && a.DiffID == b.DiffID && a.Size == b.Size &&
		a.Tree == b.Tree && a.Created.Equal(b.Created)
}

// marker is the Yocto class's .oci-layer-cache file.
func marker(in Info) []byte {
	return fmt.Appendf(nil, "cache_key=%s\nlayer_name=%s\ncreated=%s\nmachine=%s\n",
		ShortKey(in.Key), in.Name, in.Created.UTC().Format(time.RFC3339), in.Machine)
}
