package tartest

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
)

// What the builder writes reads back as given: sizes from the content,
// PAX where no format is given, Epoch only in a dated builder.
func TestBuilderReadsBack(t *testing.T) {
	for _, dated := range []bool{false, true} {
		b := New()
		if dated {
			b = NewDated()
		}
		data := b.Dir("d/").File("d/f", "hello").Symlink("l", "d/f").Link("h", "d/f").Bytes()
		tr := tar.NewReader(bytes.NewReader(data))
		var got []string
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(tr)
			got = append(got, h.Name+":"+string(h.Typeflag)+":"+h.Linkname+":"+string(body))
			if want := dated; h.ModTime.Equal(Epoch) != want {
				t.Errorf("dated %v: %s mtime %v", dated, h.Name, h.ModTime)
			}
		}
		want := []string{"d/:5::", "d/f:0::hello", "l:2:d/f:", "h:1:d/f:"}
		if len(got) != len(want) {
			t.Fatalf("got %q, want %q", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("entry %d: %q, want %q", i, got[i], want[i])
			}
		}
	}
}
