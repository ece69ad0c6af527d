package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/integration/testenv"
)

// kill -9 at several points of a big commit: the image must stay valid
// with its previous layers every time, and a re-run must succeed.
func TestKilledCommitLeavesTheImageIntact(t *testing.T) {
	testenv.NeedRoot(t)
	tmp := t.TempDir()
	runScript(t, tmp, "fixture", `
		mkdir -p base big/data
		echo base > base/file
		# ~160 MB that compresses slowly enough to be caught mid-way.
		for i in $(seq 1 60); do head -c 2000000 /dev/urandom | base64 > big/data/f$i; done`)
	img := filepath.Join(tmp, "img")
	layerfsCommit(t, "--upper", filepath.Join(tmp, "base"), "--image", "oci:"+img+":t")
	args := []string{"commit", "--upper", filepath.Join(tmp, "big"), "--image", "oci:" + img + ":t", "--threads", "1"}

	// How long a whole commit takes here, on a scratch copy.
	copyTree(t, img, filepath.Join(tmp, "scratch"))
	start := time.Now()
	if out, err := exec.Command(layerfsBin, append(args[:4:4], "oci:"+filepath.Join(tmp, "scratch")+":t", "--threads", "1")...).CombinedOutput(); err != nil {
		t.Fatalf("timing run: %v\n%s", err, out)
	}
	full := time.Since(start)
	t.Logf("a full commit takes %v", full)

	layers := 1
	for _, frac := range []float64{0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97} {
		cmd := exec.Command(layerfsBin, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(frac * float64(full)))
		cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		if err == nil {
			layers++ // it finished before the signal: the new layer is in
			t.Logf("at %.0f%% the commit had already finished", frac*100)
		} else if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("at %.0f%%: commit failed by itself: %v", frac*100, err)
		}
		if n := validateImage(t, img, "t"); n != layers {
			t.Fatalf("after kill -9 at %.0f%%: %d layers, want %d", frac*100, n, layers)
		}
	}

	if out, err := exec.Command(layerfsBin, args...).CombinedOutput(); err != nil {
		t.Fatalf("re-run after the kills: %v\n%s", err, out)
	}
	if n := validateImage(t, img, "t"); n != layers+1 {
		t.Errorf("after the re-run: %d layers, want %d", n, layers+1)
	}
	// The re-run cleared what the killed runs left.
	filepath.Walk(img, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(fi.Name(), ".layerfs-tmp-") {
			t.Errorf("leftover temp file %s", p)
		}
		return nil
	})
}

// A commit killed while creating a new layout leaves no output at all, and
// the next commit sweeps up its half-built directory.
func TestKilledFirstCommitLeavesNoOutput(t *testing.T) {
	testenv.NeedRoot(t)
	tmp := t.TempDir()
	runScript(t, tmp, "fixture", `mkdir -p out big && for i in $(seq 1 30); do head -c 2000000 /dev/urandom | base64 > big/f$i; done`)
	img := filepath.Join(tmp, "out", "img")
	cmd := exec.Command(layerfsBin, "commit", "--upper", filepath.Join(tmp, "big"), "--image", "oci:"+img, "--threads", "1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill once the half-built layout exists beside the output.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, _ := os.ReadDir(filepath.Join(tmp, "out"))
		if len(ents) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGKILL)
	if cmd.Wait() == nil {
		t.Fatal("the commit finished before it could be killed; make the upper bigger")
	}
	if _, err := os.Stat(img); !os.IsNotExist(err) {
		t.Fatalf("a killed first commit created %s (%v)", img, err)
	}
	ents, _ := os.ReadDir(filepath.Join(tmp, "out"))
	if len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), ".layerfs-tmp-") {
		t.Fatalf("want exactly the half-built layout beside the output, got %v", ents)
	}
	layerfsCommit(t, "--upper", filepath.Join(tmp, "big"), "--image", "oci:"+img)
	ents, _ = os.ReadDir(filepath.Join(tmp, "out"))
	if len(ents) != 1 || ents[0].Name() != "img" {
		t.Errorf("after the re-run the output dir holds %v, want only img", ents)
	}
	if n := validateImage(t, img, "latest"); n != 1 {
		t.Errorf("%d layers, want 1", n)
	}
}
