// Package integration tests the built layerfs binary against real peers:
// the kernel's overlayfs and the appliers of the container world.
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"
)

// layerfsBin is the layerfs binary built once for the whole run.
var layerfsBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// containerd and moby log ignored xattrs through logrus; the tests
	// report those differences themselves.
	logrus.SetLevel(logrus.ErrorLevel)
	// LAYERFS_BIN runs the suite against a prebuilt binary (a release, or
	// a deliberately broken build to check that the suite notices).
	if bin := os.Getenv("LAYERFS_BIN"); bin != "" {
		layerfsBin = bin
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "layerfs-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir for the layerfs binary:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "layerfs")
	// Built from the main module (the parent dir), which this module does
	// not import: the heavy applier deps stay out of it.
	cmd := exec.Command("go", "build", "-o", bin, "github.com/layerfs/layerfs/cmd/layerfs")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build layerfs: %v\n%s", err, out)
		return 1
	}
	layerfsBin = bin
	return m.Run()
}
