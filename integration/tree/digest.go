package tree

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// blockSize is the granularity at which zero blocks are left out of the
// content digest.
const blockSize = 64 << 10

// The content digest depends on the bytes only, not on how zeros are
// stored: a sparse file and a dense copy of it hash the same (no applier
// writes sparse files, and layer tars carry none), while skipping holes
// with SEEK_DATA keeps a 1 GiB sparse file cheap. It is sha256 over the
// size, then (offset, bytes) of every blockSize block that holds a
// non-zero byte; two contents of equal size hash equal exactly when they
// are equal.
type contentHasher struct {
	h    hash.Hash
	word [8]byte
}

func newContentHasher(size int64) *contentHasher {
	c := &contentHasher{h: sha256.New()}
	c.putWord(uint64(size))
	return c
}

func (c *contentHasher) putWord(v uint64) {
	binary.BigEndian.PutUint64(c.word[:], v)
	c.h.Write(c.word[:])
}

// block adds the block at offset off (a multiple of blockSize).
func (c *contentHasher) block(off int64, b []byte) {
	if allZero(b) {
		return
	}
	c.putWord(uint64(off))
	c.h.Write(b)
}

func (c *contentHasher) sum() string { return hex.EncodeToString(c.h.Sum(nil)) }

// DigestReader returns the content digest (as Entry.Digest) of the size
// bytes read from r, e.g. a regular file's body in a layer tar.
func DigestReader(r io.Reader, size int64) (string, error) {
	c := newContentHasher(size)
	buf := make([]byte, blockSize)
	for off := int64(0); off < size; off += blockSize {
		n := min(int64(blockSize), size-off)
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return "", fmt.Errorf("read at %d of %d: %w", off, size, err)
		}
		c.block(off, buf[:n])
	}
	return c.sum(), nil
}

// contentDigest returns the content digest of the regular file p.
func contentDigest(p string, size int64) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("open %q: %w", p, err)
	}
	defer f.Close()
	c := newContentHasher(size)
	buf := make([]byte, blockSize)
	fd := int(f.Fd())
	var next int64 // first offset not yet hashed, block-aligned
	for next < size {
		data, err := unix.Seek(fd, next, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return "", fmt.Errorf("seek data in %q: %w", p, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return "", fmt.Errorf("seek hole in %q: %w", p, err)
		}
		// data >= next, so the block holding data is not hashed yet.
		for off := data / blockSize * blockSize; off < hole && off < size; off += blockSize {
			n, err := f.ReadAt(buf, off)
			if err != nil && !errors.Is(err, io.EOF) {
				return "", fmt.Errorf("read %q at %d: %w", p, off, err)
			}
			c.block(off, buf[:n])
			next = off + blockSize
		}
	}
	return c.sum(), nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.NativeEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
