// Package testenv holds the checks that decide whether an integration test
// can run here. In CI (the CI environment variable is set) a missing
// prerequisite is a failure, never a skip: the suite must not pass by
// testing nothing.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI.
func InCI() bool { return os.Getenv("CI") != "" }

// NeedTool fails (in CI) or skips (elsewhere) the test when the program
// name is not on PATH.
func NeedTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		Unavailable(t, "%s is not installed (%v)", name, err)
	}
}

// NeedRoot fails (in CI) or skips (elsewhere) unless the test runs as
// root: mounting overlayfs, mknod and chown need it.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (euid %d)", os.Geteuid())
	}
}

// Unavailable reports a missing prerequisite: fatal in CI, a skip elsewhere.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI: "+format, args...)
	}
	t.Skipf(format, args...)
}
