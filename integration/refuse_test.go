package integration

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/testenv"
)

// TestRefusesRedirectAndMetacopyUppers: uppers that the kernel wrote with
// redirect_dir=on (a renamed lower dir) or metacopy=on (a chmod of a lower
// file) describe content that is not in the upper; DESIGN rule 11 says
// commit refuses them with a clear error, as bad input (exit 2).
func TestRefusesRedirectAndMetacopyUppers(t *testing.T) {
	testenv.NeedRoot(t)
	cases := []struct {
		name, opts, ops, want string
	}{
		{"redirect_dir", "redirect_dir=on,metacopy=off,index=off", "mv d renamed", "redirect"},
		{"metacopy", "redirect_dir=on,metacopy=on,index=off", "chmod 0600 f", "metacopy"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			d := mkdirs(t, base, "lower", "upper", "work", "merged")
			runScript(t, d[0], "lower", "mkf d/x; mkf f 'some content'")
			opts := "lowerdir=" + d[0] + ",upperdir=" + d[1] + ",workdir=" + d[2] + "," + c.opts
			if err := unix.Mount("overlay", d[3], "overlay", 0, opts); err != nil {
				t.Fatalf("mount overlay (%s): %v", opts, err)
			}
			runScript(t, d[3], "ops", c.ops)
			if err := unix.Unmount(d[3], 0); err != nil {
				t.Fatalf("unmount: %v", err)
			}
			cmd := exec.Command(layerfsBin, "commit", "--upper", d[1], "--lower", d[0],
				"--image", "oci:"+filepath.Join(base, "img")+":test")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("commit of a %s upper: want exit 2, got %v; stderr: %s", c.name, err, stderr.String())
			}
			if !strings.Contains(strings.ToLower(stderr.String()), c.want) {
				t.Errorf("the error does not name %q: %s", c.want, stderr.String())
			}
		})
	}
}
