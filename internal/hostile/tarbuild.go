package hostile

import (
	"bytes"
	"fmt"
	"github.com/layerfs/layerfs/internal/tartest"
	"strconv"
)

// rawHeader is a ustar header block with octal fields, for shapes
// archive/tar will not write.
func rawHeader(name string, typ byte, size int64) []byte {
	blk := make([]byte, 512)
	copy(blk[0:100], name)
	octal(blk[100:108], 0o644)
	octal(blk[108:116], 0)
	octal(blk[116:124], 0)
	octal(blk[124:136], size)
	octal(blk[136:148], tartest.Epoch.Unix())
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
