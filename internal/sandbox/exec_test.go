package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// A descriptor this process holds without close-on-exec (as go-fuse's
// FUSE connection arrives from fusermount3) does not reach a direct
// install, which still gets its environment and working directory.
func TestRunDirectGetsNoStrayDescriptor(t *testing.T) {
	fd, err := syscall.Open("/dev/null", syscall.O_RDONLY, 0) // no O_CLOEXEC, on purpose
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	dir := t.TempDir()
	var out bytes.Buffer
	_, err = Run(context.Background(), Command{
		Script: fmt.Sprintf(`if [ -e /proc/self/fd/%d ]; then echo "LEAK"; fi; echo "env=$FOO dir=$(pwd) marker=${%s:-none}"`, fd, execEnv),
		Dir:    dir,
		Env:    []string{"PATH=/usr/bin:/bin", "FOO=bar"},
		Output: &out,
	})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	got := out.String()
	if strings.Contains(got, "LEAK") {
		t.Errorf("the script inherited descriptor %d: %s", fd, got)
	}
	if want := "env=bar dir=" + dir + " marker=none"; !strings.Contains(got, want) {
		t.Errorf("output %q, want %q", got, want)
	}
}
