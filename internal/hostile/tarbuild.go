package hostile

import (
	"archive/tar"
	"bytes"
	"fmt"
	"strconv"
	"time"
)

// epoch dates every entry, so that a case's tar is the same bytes each time.
func epoch() time.Time { return time.Unix(1700000000, 0) }

// builder writes a tar with archive/tar, and raw blocks where archive/tar
// refuses to write a shape (huge or forbidden PAX records, lying sizes).
// Errors are programming errors in the corpus: they panic.
type builder struct {
	buf bytes.Buffer
	tw  *tar.Writer
}

func newTar() *builder {
	b := &builder{}
	b.tw = tar.NewWriter(&b.buf)
	return b
}

func (b *builder) add(h *tar.Header, data string) *builder {
	if h.ModTime.IsZero() {
		h.ModTime = epoch()
	}
	if h.Format == tar.FormatUnknown {
		h.Format = tar.FormatPAX
	}
	if h.Typeflag == tar.TypeReg {
		h.Size = int64(len(data))
	}
	if err := b.tw.WriteHeader(h); err != nil {
		panic(fmt.Sprintf("hostile corpus: %s: %v", h.Name, err))
	}
	if data != "" {
		if _, err := b.tw.Write([]byte(data)); err != nil {
			panic(err)
		}
	}
	return b
}

func (b *builder) file(name, data string) *builder {
	return b.add(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}, data)
}

func (b *builder) dir(name string) *builder {
	return b.add(&tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755}, "")
}

func (b *builder) symlink(name, target string) *builder {
	return b.add(&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}, "")
}

func (b *builder) link(name, target string) *builder {
	return b.add(&tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target, Mode: 0o644}, "")
}

// raw appends bytes between entries.
func (b *builder) raw(p []byte) *builder {
	if err := b.tw.Flush(); err != nil {
		panic(err)
	}
	b.buf.Write(p)
	return b
}

// bytes ends the archive with its two zero blocks.
func (b *builder) bytes() []byte {
	if err := b.tw.Close(); err != nil {
		panic(err)
	}
	return b.buf.Bytes()
}

// unterminated returns the archive so far, without end-of-archive blocks.
func (b *builder) unterminated() []byte {
	if err := b.tw.Flush(); err != nil {
		panic(err)
	}
	return bytes.Clone(b.buf.Bytes())
}

// rawHeader is a ustar header block with octal fields, for shapes
// archive/tar will not write.
func rawHeader(name string, typ byte, size int64) []byte {
	blk := make([]byte, 512)
	copy(blk[0:100], name)
	octal(blk[100:108], 0o644)
	octal(blk[108:116], 0)
	octal(blk[116:124], 0)
	octal(blk[124:136], size)
	octal(blk[136:148], epoch().Unix())
	blk[156] = typ
	copy(blk[257:263], "ustar\x00")
	copy(blk[263:265], "00")
	checksum(blk)
	return blk
}

func octal(field []byte, v int64) {
	s := strconv.FormatInt(v, 8)
	for len(s) < len(field)-1 {
		s = "0" + s
	}
	copy(field, s)
	field[len(field)-1] = 0
}

func checksum(blk []byte) {
	for i := 148; i < 156; i++ {
		blk[i] = ' '
	}
	var sum int64
	for _, c := range blk {
		sum += int64(c)
	}
	copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
}

// padded appends data and the zeros that complete its last block.
func padded(data []byte) []byte {
	out := bytes.Clone(data)
	if r := len(out) % 512; r != 0 {
		out = append(out, make([]byte, 512-r)...)
	}
	return out
}

// paxRecords formats PAX records ("LEN key=value\n", LEN counting itself).
func paxRecords(kv ...string) []byte {
	var out []byte
	for i := 0; i+1 < len(kv); i += 2 {
		rec := " " + kv[i] + "=" + kv[i+1] + "\n"
		n := len(rec)
		for n < len(rec)+len(strconv.Itoa(n)) {
			n = len(rec) + len(strconv.Itoa(n))
		}
		out = append(out, strconv.Itoa(n)+rec...)
	}
	return out
}

// rawPAX is a PAX extended header entry ('x') carrying kv, which applies
// to the entry after it.
func rawPAX(kv ...string) []byte {
	data := paxRecords(kv...)
	return append(rawHeader("PaxHeaders/x", 'x', int64(len(data))), padded(data)...)
}
