package compress

import (
	"bytes"
	"io"
	"os/exec"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/layerfs/layerfs/internal/testutil"
)

func gzipped(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstded(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// bzipped compresses with the bzip2 tool: Go's library only reads bzip2.
func bzipped(t *testing.T, b []byte) []byte {
	cmd := exec.Command(testutil.RequireTool(t, "bzip2"), "-c")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDecompressStream(t *testing.T) {
	plain := bytes.Repeat([]byte("layerfs "), 1000)
	all := []Format{Gzip, Zstd, Bzip2}
	cases := []struct {
		name   string
		data   []byte
		detect Format
		accept []Format
		want   Format // as read
		out    []byte
	}{
		{"gzip", gzipped(t, plain), Gzip, all, Gzip, plain},
		{"zstd", zstded(t, plain), Zstd, all, Zstd, plain},
		{"bzip2", bzipped(t, plain), Bzip2, all, Bzip2, plain},
		{"plain", plain, None, all, None, plain},
		{"empty", nil, None, all, None, nil},
		// Not accepted: read as it is, for the caller's check to refuse.
		{"bzip2 not accepted", bzipped(t, plain), Bzip2, []Format{Gzip, Zstd}, None, bzipped(t, plain)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Detect(c.data); got != c.detect {
				t.Errorf("Detect = %v, want %v", got, c.detect)
			}
			if got := DetectReaderAt(bytes.NewReader(c.data)); got != c.detect {
				t.Errorf("DetectReaderAt = %v, want %v", got, c.detect)
			}
			r, f, err := DecompressStream(bytes.NewReader(c.data), c.accept...)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if f != c.want {
				t.Errorf("format %v, want %v", f, c.want)
			}
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.out) {
				t.Errorf("read %d bytes, want %d", len(got), len(c.out))
			}
		})
	}
}

func TestDecompressStreamCorrupt(t *testing.T) {
	// A gzip magic with a broken header is an error naming gzip, not a
	// stream read as it is.
	_, _, err := DecompressStream(bytes.NewReader([]byte{0x1f, 0x8b, 0, 0}), Gzip)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("gzip")) {
		t.Fatalf("err = %v, want a gzip error", err)
	}
}
