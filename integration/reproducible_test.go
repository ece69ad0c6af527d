package integration

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/layerfs/layerfs/integration/testenv"
)

// The same script run twice, at different times, under different umasks,
// creating files in a different order, gives uppers that commit to the
// same layer and the same manifest, whatever the compression thread count.
func TestReproducibleAcrossRunsAndThreads(t *testing.T) {
	testenv.NeedRoot(t)
	tmp := t.TempDir()
	base := filepath.Join(tmp, "base")
	runScript(t, tmp, "base", `
		mkdir -p base/etc base/usr/share/doc base/var/lib
		echo one > base/etc/one
		echo gone > base/etc/gone
		mkdir base/var/lib/db && echo old > base/var/lib/db/old`)

	// The script sets every mode it cares about, so the umask may differ;
	// $ORDER decides the creation order.
	script := `
		umask $UMASK
		files="a b c d e f g h"
		[ "$ORDER" = reverse ] && files="h g f e d c b a"
		for f in $files; do
			install -d -m 0755 usr/share/doc/pkg-$f
			printf 'doc %s\n' $f > usr/share/doc/pkg-$f/README
			chmod 0644 usr/share/doc/pkg-$f/README
		done
		# several compression blocks, so the thread count matters
		seq 1 900000 > usr/share/big
		chmod 0644 usr/share/big
		rm etc/gone
		rm -rf var/lib/db && install -d -m 0700 var/lib/db && echo new > var/lib/db/new && chmod 0600 var/lib/db/new
		ln -s ../usr/share/big etc/big-link`
	img := filepath.Join(tmp, "img")
	layerfsCommit(t, "--upper", base, "--image", "oci:"+img+":base", "--source-date-epoch", "1700000000")
	copyTree(t, img, img+"-a")
	copyTree(t, img, img+"-b")

	upperA := throughOverlay(t, []string{base}, "UMASK=022 ORDER=forward\n"+script)
	time.Sleep(1100 * time.Millisecond) // the second upper gets other mtimes
	upperB := throughOverlay(t, []string{base}, "UMASK=077 ORDER=reverse\n"+script)

	t.Setenv("SOURCE_DATE_EPOCH", "1700000000") // the variable, not the flag
	ra := layerfsCommit(t, "--upper", upperA, "--lower", base, "--image", "oci:"+img+"-a:base", "--threads", "1")
	rb := layerfsCommit(t, "--upper", upperB, "--lower", base, "--image", "oci:"+img+"-b:base", "--threads", "8")
	if ra.Digest != rb.Digest || ra.DiffID != rb.DiffID {
		t.Errorf("layers differ: %s (1 thread) vs %s (8 threads)", ra.Digest, rb.Digest)
	}
	if ra.Manifest != rb.Manifest {
		t.Errorf("manifests differ: %s vs %s", ra.Manifest, rb.Manifest)
	}
	// The lower listed from the image's tars must agree too.
	rc := layerfsCommit(t, "--upper", upperB, "--image", "oci:"+img+":base", "--threads", "3")
	if rc.Manifest != ra.Manifest {
		t.Errorf("commit with the lower listed from the image: manifest %s, want %s", rc.Manifest, ra.Manifest)
	}
	for _, d := range []string{img, img + "-a", img + "-b"} {
		if n := validateImage(t, d, "base"); n != 2 {
			t.Errorf("%s: %d layers, want 2", d, n)
		}
	}
}
