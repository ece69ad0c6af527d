package commit

import (
	"os"
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
	sh(t, tmp, `
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
		head -c 6000000 /dev/zero | tr '\0' 'x' > usr/share/big
		chmod 0644 usr/share/big
		rm etc/gone
		rm -rf var/lib/db && install -d -m 0700 var/lib/db && echo new > var/lib/db/new && chmod 0600 var/lib/db/new
		ln -s ../usr/share/big etc/big-link`
	img := filepath.Join(tmp, "img")
	commit(t, nil, "--upper", base, "--image", "oci:"+img+":base", "--source-date-epoch", "1700000000")
	for _, d := range []string{"a", "b"} {
		sh(t, tmp, "cp -a img img-"+d)
	}

	upperA := overlay(t, []string{base}, func(m string) { sh(t, m, script, "UMASK=022", "ORDER=forward") })
	time.Sleep(1100 * time.Millisecond) // the second upper gets other mtimes
	upperB := overlay(t, []string{base}, func(m string) { sh(t, m, script, "UMASK=077", "ORDER=reverse") })

	epoch := []string{"SOURCE_DATE_EPOCH=1700000000"}
	ra := commit(t, epoch, "--upper", upperA, "--lower", base, "--image", "oci:"+img+"-a:base", "--threads", "1")
	rb := commit(t, epoch, "--upper", upperB, "--lower", base, "--image", "oci:"+img+"-b:base", "--threads", "8")
	if ra.Digest != rb.Digest || ra.DiffID != rb.DiffID {
		t.Errorf("layers differ: %s (1 thread) vs %s (8 threads)", ra.Digest, rb.Digest)
	}
	if ra.Manifest != rb.Manifest {
		t.Errorf("manifests differ: %s vs %s", ra.Manifest, rb.Manifest)
	}
	// The listed-lower path must agree too.
	rc := commit(t, epoch, "--upper", upperB, "--image", "oci:"+img+":base", "--threads", "3")
	if rc.Manifest != ra.Manifest {
		t.Errorf("commit with the lower listed from the image: manifest %s, want %s", rc.Manifest, ra.Manifest)
	}
	for _, d := range []string{img, img + "-a", img + "-b"} {
		if n := validateImage(t, d, "base"); n != 2 {
			t.Errorf("%s: %d layers, want 2", d, n)
		}
		skopeoVerify(t, d, "base")
	}
	if _, err := os.Stat(upperA); err != nil {
		t.Fatal(err)
	}
}
