package layers

import (
	"os"
	"testing"

	"github.com/layerfs/layerfs/internal/sandbox"
)

// TestMain lets the install sandbox re-execute the test binary.
func TestMain(m *testing.M) {
	if sandbox.Reexec() {
		return
	}
	os.Exit(m.Run())
}
