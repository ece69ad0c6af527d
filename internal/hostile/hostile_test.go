package hostile

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"strings"
	"testing"
)

// Every case has what a runner needs, its tar is the same bytes each time,
// and every case of hostile-matrix.md is there.
func TestCasesAreWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range Cases() {
		if seen[c.Name] || c.Doc == "" || c.Tar == nil || (c.Want != Reject && c.Want != Contain) {
			t.Errorf("case %q: duplicate name, or no doc, tar or outcome", c.Name)
		}
		if c.Want == Reject && c.Mention == "" {
			t.Errorf("case %q: a rejection must say what it mentions", c.Name)
		}
		seen[c.Name] = true
		if a, b := c.Tar("/x/outside"), c.Tar("/x/outside"); !bytes.Equal(a, b) || len(a) == 0 {
			t.Errorf("case %q: its tar is empty or differs between calls", c.Name)
		}
	}
	for i := 1; i <= 29; i++ {
		found := false
		for n := range seen {
			found = found || strings.HasPrefix(n, fmt.Sprintf("h%02d_", i))
		}
		if !found {
			t.Errorf("no case h%02d_* (hostile-matrix.md)", i)
		}
	}
}

func TestGzipBombIsTinyAndFull(t *testing.T) {
	const size = 8 << 20
	bomb := GzipBomb(size)
	if len(bomb) > size/500 {
		t.Errorf("%d bytes compressed for %d: not a bomb", len(bomb), size)
	}
	zr, err := gzip.NewReader(bytes.NewReader(bomb))
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, zr)
	if err != nil || n < size {
		t.Errorf("inflates to %d bytes (%v), want more than %d", n, err, size)
	}
}
