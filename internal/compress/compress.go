// Package compress tells a stream's compression by its first bytes and
// reads it decompressed: the one place layerfs recognises gzip, zstd and
// bzip2 (as containerd's compression.DecompressStream).
package compress

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"fmt"
	"github.com/klauspost/compress/gzip"
	"io"
	"slices"

	"github.com/klauspost/compress/zstd"
)

// Format is a stream's compression.
type Format int

const (
	None Format = iota
	Gzip
	Zstd
	Bzip2
)

func (f Format) String() string {
	switch f {
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	case Bzip2:
		return "bzip2"
	}
	return "none"
}

// magicLen is how many bytes Detect needs to tell every Format.
const magicLen = 4

// Detect tells the compression of a stream that starts with magic (at
// least its first 4 bytes where the stream has them).
func Detect(magic []byte) Format {
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return Gzip
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd
	case bytes.HasPrefix(magic, []byte("BZh")):
		return Bzip2
	}
	return None
}

// DetectReaderAt tells the compression of the stream in r.
func DetectReaderAt(r io.ReaderAt) Format {
	var magic [magicLen]byte
	n, _ := r.ReadAt(magic[:], 0)
	return Detect(magic[:n])
}

// DecompressStream reads r decompressed when its first bytes name one of
// the formats in accept, and as it is otherwise (a stream in a format the
// caller does not accept then fails where its content is checked, as an
// unknown one does). It returns the format it read r as; Close releases
// the decompressor but does not close r.
func DecompressStream(r io.Reader, accept ...Format) (io.ReadCloser, Format, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	magic, _ := br.Peek(magicLen)
	f := Detect(magic)
	if !slices.Contains(accept, f) {
		return io.NopCloser(br), None, nil
	}
	switch f {
	case Gzip:
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, f, fmt.Errorf("gzip: %w", err)
		}
		return gz, f, nil
	case Zstd:
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, f, fmt.Errorf("zstd: %w", err)
		}
		return zr.IOReadCloser(), f, nil
	case Bzip2:
		return io.NopCloser(bzip2.NewReader(br)), f, nil
	}
	return io.NopCloser(br), None, nil
}
