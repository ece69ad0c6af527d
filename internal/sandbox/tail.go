package sandbox

import (
	"bytes"
	"io"
)

// maxLine bounds one kept line: a script that prints megabytes without a
// newline must not grow the tail with them.
const maxLine = 4096

// tail is the command's stdout and stderr: it forwards everything to out
// and keeps the last TailLines lines. exec.Cmd calls Write from one
// goroutine at a time when Stdout and Stderr are the same writer.
type tail struct {
	out    io.Writer
	outErr error

	ring    [TailLines]string
	next    int // where the next line goes in ring
	n       int // lines in ring
	partial []byte
}

func (t *tail) Write(p []byte) (int, error) {
	n := len(p)
	if t.out != nil && t.outErr == nil {
		_, t.outErr = t.out.Write(p)
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			t.appendPartial(p)
			break
		}
		t.appendPartial(p[:i])
		t.push(visible(t.partial))
		t.partial = t.partial[:0]
		p = p[i+1:]
	}
	return n, nil
}

// appendPartial adds to the unfinished line. Progress meters (apt, dnf,
// curl) redraw one line with carriage returns; only the last drawing is
// worth keeping once the line is long.
func (t *tail) appendPartial(b []byte) {
	t.partial = append(t.partial, b...)
	if len(t.partial) <= maxLine {
		return
	}
	if i := bytes.LastIndexByte(t.partial[:len(t.partial)-1], '\r'); i >= 0 {
		t.partial = t.partial[:copy(t.partial, t.partial[i+1:])]
	}
	if len(t.partial) > maxLine {
		t.partial = t.partial[:maxLine]
	}
}

func (t *tail) push(line string) {
	t.ring[t.next] = line
	t.next = (t.next + 1) % TailLines
	if t.n < TailLines {
		t.n++
	}
}

// Lines returns the kept lines, oldest first, and the unfinished one.
func (t *tail) Lines() []string {
	lines := make([]string, 0, TailLines+1)
	for i := 0; i < t.n; i++ {
		lines = append(lines, t.ring[(t.next-t.n+i+TailLines)%TailLines])
	}
	if len(t.partial) > 0 {
		lines = append(lines, visible(t.partial))
		if len(lines) > TailLines {
			lines = lines[1:]
		}
	}
	return lines
}

// visible is what a terminal would show of a line: the text after its
// last carriage return, ignoring the one of a CRLF ending.
func visible(b []byte) string {
	b = bytes.TrimRight(b, "\r")
	if i := bytes.LastIndexByte(b, '\r'); i >= 0 {
		b = b[i+1:]
	}
	return string(b)
}
