package sandbox

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func write(t *testing.T, tl *tail, chunks ...string) {
	t.Helper()
	for _, c := range chunks {
		if n, err := tl.Write([]byte(c)); n != len(c) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", c, n, err)
		}
	}
}

func TestTailLinesAcrossWrites(t *testing.T) {
	var tl tail
	write(t, &tl, "a", "b\nc", "\n\nd\r\n", "e")
	if got, want := tl.Lines(), []string{"ab", "c", "", "d", "e"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestTailRingWrapsAndCountsThePartialLine(t *testing.T) {
	var tl tail
	for i := 1; i <= 45; i++ {
		write(t, &tl, fmt.Sprintf("%d\n", i))
	}
	var want []string
	for i := 26; i <= 45; i++ {
		want = append(want, fmt.Sprint(i))
	}
	if got := tl.Lines(); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	write(t, &tl, "partial")
	if got := tl.Lines(); len(got) != TailLines || got[0] != "27" || got[TailLines-1] != "partial" {
		t.Errorf("with a partial line: %q", got)
	}
}

func TestTailKeepsTheLastDrawingOfAProgressLine(t *testing.T) {
	var tl tail
	write(t, &tl, "Progress: 10%\r", "Progress: 50%\r", "Progress: 100%\r\ndone\n")
	if got, want := tl.Lines(), []string{"Progress: 100%", "done"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	// Megabytes of redrawing without a newline stay bounded and current.
	for i := 0; i < 100000; i++ {
		write(t, &tl, fmt.Sprintf("\r%6d", i))
	}
	if len(tl.partial) > maxLine+7 {
		t.Errorf("the partial line grew to %d bytes", len(tl.partial))
	}
	if got := tl.Lines(); got[len(got)-1] != " 99999" {
		t.Errorf("last line %q", got[len(got)-1])
	}
}

func TestTailCapsLongLines(t *testing.T) {
	var tl tail
	long := strings.Repeat("x", 3*maxLine)
	write(t, &tl, long[:maxLine+1], long[maxLine+1:], "\nnext\n")
	got := tl.Lines()
	if len(got) != 2 || got[0] != long[:maxLine] || got[1] != "next" {
		t.Errorf("got %d lines, first %d bytes", len(got), len(got[0]))
	}
}

type failingWriter struct{ calls int }

func (w *failingWriter) Write(p []byte) (int, error) {
	w.calls++
	return 0, errors.New("broken")
}

func TestTailSurvivesAFailingOutput(t *testing.T) {
	w := &failingWriter{}
	tl := tail{out: w}
	write(t, &tl, "a\n", "b\n")
	if w.calls != 1 {
		t.Errorf("Output written %d times after failing, want 1", w.calls)
	}
	if got := tl.Lines(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("got %q", got)
	}
}
