package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/internal/ctxio"
)

// VerifyResult is one entry's verdict.
type VerifyResult struct {
	Entry *Entry
	// Err is nil for a sound entry. It wraps ErrCorrupt when the entry's
	// files do not match its entry.json; other errors (a read failing,
	// a check this process cannot make) leave the verdict open.
	Err error
	// Moved is where a corrupt entry was quarantined; "" when it stayed
	// (sound, undecided, or in use: then Err says so).
	Moved string
}

// Verify checks every entry: entry.json, the marker, the blob against its
// digest and size, and rootfs/ against its tree digest. Corrupt entries
// are moved into .quarantine/, except those in use, which are reported
// and left. Entries removed while being checked are left out.
func (c *Cache) Verify(ctx context.Context) ([]VerifyResult, error) {
	ents, err := c.list(ctx, false)
	if err != nil {
		return nil, err
	}
	var out []VerifyResult
	for _, e := range ents {
		err := e.Err
		if err == nil {
			err = c.check(ctx, e)
		}
		if cerr := ctx.Err(); cerr != nil {
			return out, cerr
		}
		if err != nil {
			if _, serr := os.Lstat(e.Dir); errors.Is(serr, fs.ErrNotExist) {
				continue
			}
		}
		r := VerifyResult{Entry: e, Err: err}
		if errors.Is(err, ErrCorrupt) {
			if dest, qerr := c.quarantine(e); qerr != nil {
				r.Err = fmt.Errorf("%w; left in place: %w", err, qerr)
			} else {
				r.Moved = dest
			}
		}
		out = append(out, r)
	}
	return out, nil
}

func (c *Cache) check(ctx context.Context, e *Entry) error {
	in := e.Info
	m, err := os.ReadFile(e.Dir + "/" + markerFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cache entry %s: %w", e.Dir, err)
	}
	if !bytes.Equal(m, marker(in)) {
		return corruptf(e.Dir, "%s is missing or does not match %s", markerFile, entryFile)
	}
	if _, err := checkBlob(ctx, e.Blob(), in.Digest, in.Size); err != nil {
		return fmt.Errorf("cache entry %s: %w", e.Dir, err) // wraps ErrCorrupt for a mismatch
	}
	if in.TreeTrusted && !c.trusted {
		return fmt.Errorf("cache entry %s: rootfs/ not checked: its tree digest covers trusted.* xattrs, which this process cannot read; verify as root", e.Dir)
	}
	tree, err := TreeDigest(ctx, e.Rootfs())
	if err != nil {
		return fmt.Errorf("cache entry %s: %w", e.Dir, err)
	}
	if tree != in.Tree {
		return corruptf(e.Dir, "%s/ has tree digest %s, %s records %s", rootfsDir, tree, entryFile, in.Tree)
	}
	return nil
}

// checkBlob hashes the blob at p and compares it with want and, when
// non-zero, size; it returns the blob's size. A mismatch wraps
// ErrCorrupt.
func checkBlob(ctx context.Context, p string, want digest.Digest, size int64) (int64, error) {
	if err := want.Validate(); err != nil {
		return 0, fmt.Errorf("blob digest %q: %w", want, err)
	}
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%s: not a regular file", p)
	}
	if size != 0 && fi.Size() != size {
		return 0, fmt.Errorf("blob: %w: %d bytes, want %d", ErrCorrupt, fi.Size(), size)
	}
	v := want.Verifier()
	if _, err := io.Copy(v, ctxio.Reader(ctx, f)); err != nil {
		return 0, err
	}
	if !v.Verified() {
		return 0, fmt.Errorf("blob: %w: content does not match %s", ErrCorrupt, want)
	}
	return fi.Size(), nil
}
