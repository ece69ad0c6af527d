package fs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/overlay"
)

// KernelSource is the source name of layerfs's kernel overlayfs mounts, as
// /proc/self/mountinfo shows it: how `layerfs mounts` tells them from
// other overlayfs mounts.
const KernelSource = "layerfs"

// kernelOptions are the overlayfs options that keep an upper in the format
// commit reads (DESIGN.md, tar rule 11): a renamed directory is copied,
// never redirected; a chmod copies the data up, never only the metadata;
// no index of hardlinks and no inode-number tricks, which would tie the
// upper to these lowers' inodes.
var kernelOptions = [][2]string{
	{"redirect_dir", "off"},
	{"metacopy", "off"},
	{"index", "off"},
	{"xino", "off"},
}

// kernelMount is an overlayfs mount made with the new mount API and never
// attached anywhere (fsmount): it belongs to no mount namespace, lives as
// long as a descriptor of it is open, and so disappears with this process,
// however it ends. This process reaches it through /proc/self/fd; an
// install gets a clone of it (Tree) to attach in its own namespace.
type kernelMount struct {
	fd *os.File
}

// kernelError is the kernel's refusal of an overlayfs mount, with the
// messages overlayfs left in the filesystem context ("filesystem on X
// not supported as upperdir").
type kernelError struct {
	op   string
	err  error
	msgs []string
}

func (e *kernelError) Error() string {
	return "the kernel's overlayfs: " + e.why()
}

func (e *kernelError) why() string {
	if len(e.msgs) > 0 {
		return strings.Join(e.msgs, "; ")
	}
	return fmt.Sprintf("%s: %v", e.op, e.err)
}

func (e *kernelError) Unwrap() error { return e.err }

// mountKernel makes the detached mount of opts. Every layer is passed by
// descriptor (lowerdir+, upperdir and workdir take one since Linux 6.13):
// neither the one-page limit of lowerdir= nor the 255 bytes of an fsconfig
// string value bounds how many lowers there are or how long their paths
// are. The options's Work is layerfs's workdir: overlayfs gets a "work"
// dir inside it, and an empty "lower" dir when there is no lower (overlayfs
// needs one). Without an upper the view is read-only: overlayfs over two
// lowers or more, a read-only bind mount of a single one (overlayfs wants
// two).
func mountKernel(opts Options) (*kernelMount, error) {
	if opts.Upper == "" {
		switch len(opts.Lowers) {
		case 0:
			return nil, inputerr.New("nothing to mount: no lower and no upper")
		case 1:
			return bindReadOnly(opts.Lowers[0])
		}
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	open := func(p string) (int, error) {
		fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: p, Err: err}
		}
		fds = append(fds, fd)
		return fd, nil
	}
	lowers := opts.Lowers
	var work string
	if opts.Upper != "" {
		work = filepath.Join(opts.Work, "work")
		dirs := []string{work}
		if len(lowers) == 0 {
			empty := filepath.Join(opts.Work, "lower")
			dirs = append(dirs, empty)
			lowers = []string{empty}
		}
		for _, d := range dirs {
			if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return nil, err
			}
		}
	}
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, &kernelError{op: "fsopen", err: err}
	}
	fds = append(fds, fsfd)
	fail := func(op string, err error) (*kernelMount, error) {
		return nil, &kernelError{op: op, err: err, msgs: fsMessages(fsfd)}
	}
	if err := unix.FsconfigSetString(fsfd, "source", KernelSource); err != nil {
		return fail("source", err)
	}
	for _, o := range kernelOptions {
		if err := unix.FsconfigSetString(fsfd, o[0], o[1]); err != nil {
			return fail(o[0]+"="+o[1], err)
		}
	}
	if opts.NoSync && opts.Upper != "" {
		// The upper is thrown away if the job dies; what is kept is
		// synced once, whole (the cache's insert).
		if err := unix.FsconfigSetFlag(fsfd, "volatile"); err != nil {
			return fail("volatile", err)
		}
	}
	// lowerdir+ takes the topmost first.
	for i := len(lowers) - 1; i >= 0; i-- {
		fd, err := open(lowers[i])
		if err != nil {
			return nil, err
		}
		if err := unix.FsconfigSetFd(fsfd, "lowerdir+", fd); err != nil {
			return fail("lowerdir+ "+lowers[i], err)
		}
	}
	if opts.Upper != "" {
		for _, kv := range [][2]string{{"upperdir", opts.Upper}, {"workdir", work}} {
			fd, err := open(kv[1])
			if err != nil {
				return nil, err
			}
			if err := unix.FsconfigSetFd(fsfd, kv[0], fd); err != nil {
				return fail(kv[0]+" "+kv[1], err)
			}
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fail("create", err)
	}
	attrs := 0
	if opts.Upper == "" {
		attrs = unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return fail("fsmount", err)
	}
	return &kernelMount{fd: os.NewFile(uintptr(mfd), "overlayfs")}, nil
}

// fsMessages reads what the filesystem logged in its context: lines
// starting "e " (errors), "w " (warnings) or "i ".
func fsMessages(fsfd int) []string {
	var msgs []string
	buf := make([]byte, 4096)
	for range 16 {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		m := strings.TrimSpace(string(buf[:n]))
		if len(m) > 2 && m[1] == ' ' {
			m = m[2:]
		}
		msgs = append(msgs, strings.TrimPrefix(m, "overlay: "))
	}
	return msgs
}

// bindReadOnly is the read-only view of a single layer dir: a detached
// bind mount of it.
func bindReadOnly(dir string) (*kernelMount, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return nil, &kernelError{op: "bind " + dir, err: err}
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
		unix.Close(fd)
		return nil, &kernelError{op: "read-only bind " + dir, err: err}
	}
	return &kernelMount{fd: os.NewFile(uintptr(fd), dir)}, nil
}

// Root is where this process reaches the merged view.
func (k *kernelMount) Root() string {
	return "/proc/self/fd/" + strconv.Itoa(int(k.fd.Fd()))
}

// Tree returns a new detached mount of the same filesystem, for another
// mount namespace to attach (move_mount) and lose with itself.
func (k *kernelMount) Tree() (*os.File, error) {
	fd, err := unix.OpenTree(int(k.fd.Fd()), "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return nil, fmt.Errorf("clone the overlayfs mount: %w", err)
	}
	return os.NewFile(uintptr(fd), "overlayfs"), nil
}

// Attach mounts the view at mountpoint in this process's mount namespace,
// where it stays when the process ends.
func (k *kernelMount) Attach(mountpoint string) error {
	if err := unix.MoveMount(int(k.fd.Fd()), "", unix.AT_FDCWD, mountpoint, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach the overlayfs mount at %s: %w", mountpoint, err)
	}
	return nil
}

// Close lets go of the mount. A detached one is gone once no clone of it
// is attached anywhere either.
func (k *kernelMount) Close() error {
	return k.fd.Close()
}

// MountKernel mounts opts with the kernel's overlayfs at mountpoint, in
// this process's mount namespace, and records it for `layerfs mounts`:
// no process serves it, and it stays until it is unmounted. A dead FUSE
// mount left at mountpoint is cleared first.
func MountKernel(mountpoint string, opts Options) error {
	// The layer dirs are checked as the FUSE driver checks them: what
	// overlayfs would refuse with a bare EINVAL gets a message.
	check, err := overlay.NewUnion(overlay.UnionOptions{Lowers: opts.Lowers, Upper: opts.Upper, Work: opts.Work})
	if err != nil {
		return inputerr.Wrap(err)
	}
	check.Close()
	if err := clearStale(mountpoint); err != nil {
		return err
	}
	k, err := mountKernel(opts)
	if err != nil {
		return err
	}
	defer k.Close()
	if err := k.Attach(mountpoint); err != nil {
		return err
	}
	lowers := opts.Lowers
	if lowers == nil {
		lowers = []string{}
	}
	if _, err := Register(MountInfo{Mountpoint: mountpoint, Lowers: lowers, Upper: opts.Upper, Workdir: opts.Work,
		ReadOnly: opts.Upper == "", Driver: string(DriverKernel), Started: time.Now().UTC().Truncate(time.Second)}); err != nil {
		Unmount(mountpoint, true)
		return err
	}
	return nil
}

// WaitUnmounted returns once nothing is mounted at mountpoint any more, or
// when stop is closed: the kernel signals a change of the mount table on
// /proc/self/mountinfo.
func WaitUnmounted(mountpoint string, stop <-chan struct{}) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		<-stop
		return
	}
	defer f.Close()
	for {
		if m, ok, err := Find(mountpoint); err == nil && (!ok || !m.Mounted) {
			return
		}
		select {
		case <-stop:
			return
		default:
		}
		unix.Poll([]unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLPRI}}, 500)
		f.Seek(0, 0)
		io.Copy(io.Discard, f) // the next change wakes the poll only once read
	}
}
