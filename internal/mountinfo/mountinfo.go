// Package mountinfo reads the kernel's table of the mounts of this
// process's mount namespace, /proc/self/mountinfo.
package mountinfo

import (
	"os"
	"slices"
	"strings"
)

// Mount is one line of the table.
type Mount struct {
	Dev        string // MAJ:MIN of the filesystem
	Mountpoint string
	FSType     string
	Source     string
}

// Read returns the mounts of this process's namespace, in the kernel's
// order: of stacked mounts at one mountpoint, the last is on top.
func Read() ([]Mount, error) {
	// One read, not a scanner: a line may be long (an overlayfs mount
	// names every lower), and the kernel builds the whole table anyway.
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []Mount
	for line := range strings.SplitSeq(string(data), "\n") {
		if m, ok := Parse(line); ok {
			out = append(out, m)
		}
	}
	return out, nil
}

// Parse reads a line: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] -
// FSTYPE SOURCE SUPEROPTS".
func Parse(line string) (Mount, bool) {
	f := strings.Fields(line)
	sep := slices.Index(f, "-")
	if len(f) < 5 || sep < 0 || sep+1 >= len(f) {
		return Mount{}, false
	}
	m := Mount{Dev: f[2], Mountpoint: unescape(f[4]), FSType: f[sep+1]}
	if sep+2 < len(f) {
		m.Source = unescape(f[sep+2])
	}
	return m, true
}

// unescape undoes the kernel's octal escapes (\040 for a space, and tab,
// newline and backslash).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
