package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// Driver names what serves a union mount.
type Driver string

const (
	// DriverAuto picks the kernel where this process may use it, else FUSE.
	DriverAuto Driver = "auto"
	// DriverKernel is the kernel's overlayfs: root only.
	DriverKernel Driver = "kernel"
	// DriverFUSE is the layerfs daemon over /dev/fuse: everywhere.
	DriverFUSE Driver = "fuse"
)

// ParseDriver reads a --driver value ("" is auto); what names it is for
// the error.
func ParseDriver(s, what string) (Driver, error) {
	switch d := Driver(s); d {
	case "":
		return DriverAuto, nil
	case DriverAuto, DriverKernel, DriverFUSE:
		return d, nil
	}
	return "", inputerr.New("%s %q: want auto, kernel or fuse", what, s)
}

// Choice is the driver a mount gets, and why, for the log.
type Choice struct {
	Driver Driver
	// Why says why FUSE serves (rootless, a fake root, what the kernel
	// refused, or that it was asked for); empty for the kernel.
	Why string
}

// Describe says where installs run, in the build log's words.
func (c Choice) Describe() string {
	if c.Driver == DriverKernel {
		return "the kernel's overlayfs"
	}
	return "layerfs FUSE (" + c.Why + ")"
}

// Prober decides which driver serves mounts, and keeps the kernel's
// answer for each upper filesystem for as long as it lives (one process):
// a probe is a mount, which is cheap, but a build of many layers asks
// once per layer.
type Prober struct {
	mu    sync.Mutex
	byDev map[uint64]error
	// Environ is the environment a fake root is looked for in (nil:
	// this process's); UID the effective uid (-1: this process's). Tests
	// set them.
	Environ []string
	UID     int
}

// NewProber returns a Prober for this process.
func NewProber() *Prober { return &Prober{UID: -1} }

// Choose resolves want for mounts whose upper will live on the
// filesystem of dir (an existing, writable directory, where the probe
// makes and removes its own dirs; "" for a read-only mount, which has no
// upper to probe). FUSE, and auto without the kernel, never fail; kernel
// fails with a bad-input error saying why the kernel cannot serve.
func (p *Prober) Choose(want Driver, dir string) (Choice, error) {
	if want == DriverFUSE {
		return Choice{Driver: DriverFUSE, Why: "--driver fuse"}, nil
	}
	why := p.notKernel()
	if why == "" && dir != "" {
		if err := p.probe(dir); err != nil {
			why = err.Error()
		}
	}
	if why == "" {
		return Choice{Driver: DriverKernel}, nil
	}
	if want == DriverKernel {
		return Choice{}, inputerr.New("--driver kernel: the kernel's overlayfs cannot serve here: %s", why)
	}
	return Choice{Driver: DriverFUSE, Why: why}, nil
}

// notKernel says why the kernel's overlayfs is out of the question
// without trying it: only root in the initial user namespace mounts it
// with the options commit needs, and under a fake root the owners the
// install sets exist only in the fake root's database unless the mount's
// daemon sees the chowns.
func (p *Prober) notKernel() string {
	uid := p.UID
	if uid < 0 {
		uid = os.Geteuid()
	}
	if uid != 0 {
		return "rootless"
	}
	environ := p.Environ
	if environ == nil {
		environ = os.Environ()
	}
	if fr := FakeRoot(environ); fr != "" {
		return "under a fake root: " + fr
	}
	if !initialUserNamespace() {
		return "in a user namespace"
	}
	return ""
}

// FakeRoot names the fake root (pseudo, fakeroot) environ puts a process
// under, or "".
func FakeRoot(environ []string) string {
	vars := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	if vars["FAKEROOTKEY"] != "" {
		return "fakeroot"
	}
	for lib := range strings.FieldsFuncSeq(vars["LD_PRELOAD"], func(r rune) bool { return r == ':' || r == ' ' }) {
		switch base := filepath.Base(lib); {
		case strings.HasPrefix(base, "libfakeroot"):
			return "fakeroot"
		case strings.HasPrefix(base, "libpseudo"):
			if vars["PSEUDO_DISABLED"] != "1" {
				return "pseudo"
			}
		}
	}
	if vars["PSEUDO_DISABLED"] != "1" {
		for k := range vars {
			if strings.HasPrefix(k, "PSEUDO_") {
				return "pseudo"
			}
		}
	}
	return ""
}

// initialUserNamespace reports whether this process runs in the initial
// user namespace, whose uid map is the identity over every uid.
func initialUserNamespace() bool {
	data, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := strings.Fields(string(data))
	return len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295"
}

// probe mounts an overlayfs over an empty lower with an upper and workdir
// in dir, with the options a build uses, and unmounts it; the kernel's own
// message says what it refused. The answer is kept per filesystem.
func (p *Prober) probe(dir string) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("the upper's directory %s: %w", dir, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err, ok := p.byDev[st.Dev]; ok {
		return err
	}
	err := probeKernel(dir)
	if p.byDev == nil {
		p.byDev = map[uint64]error{}
	}
	p.byDev[st.Dev] = err
	return err
}

func probeKernel(dir string) error {
	tmp, err := os.MkdirTemp(dir, ".layerfs-probe-")
	if err != nil {
		return fmt.Errorf("cannot make a probe dir in %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	opts := Options{Upper: filepath.Join(tmp, "upper"), Work: filepath.Join(tmp, "work"), NoSync: true}
	for _, d := range []string{opts.Upper, opts.Work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	k, err := mountKernel(opts)
	if err != nil {
		var ke *kernelError
		if errors.As(err, &ke) {
			return fmt.Errorf("the upper on %s: %s", dir, ke.why())
		}
		return err
	}
	return k.Close()
}
