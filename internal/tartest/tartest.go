// Package tartest builds tar streams for tests and fixtures, entry by
// entry (as containerd's tartest does): the one builder of the module's
// tests and of the hostile corpus. A fixture that archive/tar cannot
// write is raw blocks between entries (Raw).
package tartest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"time"
)

// Epoch dates the entries of a dated builder.
var Epoch = time.Unix(1700000000, 0)

// Builder writes one tar. Its errors are mistakes in a fixture: it
// panics on them.
type Builder struct {
	buf   bytes.Buffer
	tw    *tar.Writer
	dated bool
}

// New returns a builder that writes each header as given, but for the
// two defaults of Add.
func New() *Builder {
	b := &Builder{}
	b.tw = tar.NewWriter(&b.buf)
	return b
}

// NewDated returns a builder that also dates every entry without a
// ModTime at Epoch, so that a fixture is the same bytes each time.
func NewDated() *Builder {
	b := New()
	b.dated = true
	return b
}

// Add writes h and, for a regular file, data as its content (h.Size is
// then len(data)). A header without a format is written as PAX.
func (b *Builder) Add(h *tar.Header, data string) *Builder {
	if b.dated && h.ModTime.IsZero() {
		h.ModTime = Epoch
	}
	if h.Format == tar.FormatUnknown {
		h.Format = tar.FormatPAX
	}
	if h.Typeflag == tar.TypeReg {
		h.Size = int64(len(data))
	}
	if err := b.tw.WriteHeader(h); err != nil {
		panic(fmt.Sprintf("tar fixture: %s: %v", h.Name, err))
	}
	if data != "" {
		if _, err := b.tw.Write([]byte(data)); err != nil {
			panic(fmt.Sprintf("tar fixture: %s: %v", h.Name, err))
		}
	}
	return b
}

// File adds a regular file, 0644.
func (b *Builder) File(name, data string) *Builder {
	return b.Add(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}, data)
}

// Dir adds a directory, 0755.
func (b *Builder) Dir(name string) *Builder {
	return b.Add(&tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}, "")
}

// Symlink adds a symlink to target.
func (b *Builder) Symlink(name, target string) *Builder {
	return b.Add(&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}, "")
}

// Link adds a hardlink to target.
func (b *Builder) Link(name, target string) *Builder {
	return b.Add(&tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target, Mode: 0o644}, "")
}

// Raw appends bytes between entries.
func (b *Builder) Raw(p []byte) *Builder {
	if err := b.tw.Flush(); err != nil {
		panic(err)
	}
	b.buf.Write(p)
	return b
}

// Bytes ends the archive with its two zero blocks and returns it.
func (b *Builder) Bytes() []byte {
	if err := b.tw.Close(); err != nil {
		panic(err)
	}
	return b.buf.Bytes()
}

// Unterminated returns the archive so far, without end-of-archive blocks.
func (b *Builder) Unterminated() []byte {
	if err := b.tw.Flush(); err != nil {
		panic(err)
	}
	return bytes.Clone(b.buf.Bytes())
}
