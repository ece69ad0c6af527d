package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/overlay"
)

// Options describe one mount.
type Options struct {
	Lowers []string // base first
	Upper  string   // empty: a read-only merged view
	// Work is the copy-up staging dir, on the upper's filesystem. Empty
	// means DefaultWorkdir(Upper).
	Work  string
	Debug bool
	// Timeout is how long the kernel may cache names and attributes. The
	// daemon is the only writer of the layers, so long is right.
	Timeout time.Duration
}

// DefaultWorkdir is a hidden sibling of the upper: on its filesystem, and
// never inside it.
func DefaultWorkdir(upper string) string {
	return filepath.Join(filepath.Dir(upper), "."+filepath.Base(upper)+".layerfs-work")
}

// FsType is the filesystem type layerfs mounts show in /proc/mounts.
const FsType = "fuse.layerfs"

// Server is a serving mount.
type Server struct {
	*fuse.Server
	Mountpoint string
	keep       []*os.File // the read-only lower mounts live as long as these
}

// Mount mounts the union of opts at mountpoint and serves it from this
// process until it is unmounted. As root it mounts directly, with setuid
// files and devices working and default_permissions; as another user it
// goes through fusermount3 and decides permissions itself.
func Mount(mountpoint string, opts Options) (*Server, error) {
	rootless := os.Geteuid() != 0
	if opts.Timeout == 0 {
		opts.Timeout = time.Hour
	}
	if opts.Upper != "" && opts.Work == "" {
		opts.Work = DefaultWorkdir(opts.Upper)
	}
	if opts.Work != "" {
		if err := os.MkdirAll(opts.Work, 0o700); err != nil {
			return nil, fmt.Errorf("workdir: %w", err)
		}
	}
	lowers, keep, err := readOnlyLowers(opts.Lowers)
	if err != nil {
		return nil, err
	}
	fsys := &filesystem{rootless: rootless, passthrough: !rootless, timeout: opts.Timeout}
	// Rootless, every chown is recorded, even one to the daemon's own ids:
	// a commit that maps those ids to root (a rootless build, commit
	// --squash-owner) then keeps the owner the caller asked for, and a
	// commit that does not gives the same layer as before.
	u, err := overlay.NewUnion(overlay.UnionOptions{Lowers: lowers, Upper: opts.Upper, Work: opts.Work, Rootless: rootless, RecordChowns: rootless, OnCopyUp: fsys.copiedUp,
		// The upper's filesystem may give a gone object's inode number to a
		// new file, which must not inherit its identity.
		OnGone: func(o overlay.Object) { fsys.inos.forget(inoKey{o.Layer, o.Stat.Ino}) }})
	if err != nil {
		return nil, inputerr.Wrap(err) // the layer dirs given are not usable as such
	}
	fsys.u = u
	if err := clearStale(mountpoint); err != nil {
		return nil, err
	}
	// Creating files with exactly the modes asked for: the kernel has
	// already applied the caller's umask.
	syscall.Umask(0)
	// The daemon keeps a node for every inode the kernel holds (100,000 in
	// a stat of a large rootfs); collecting garbage at under a third of the default
	// growth keeps its resident memory near the live heap.
	debug.SetGCPercent(30)

	root := &node{fsys: fsys}
	fsys.root = root
	ttl := opts.Timeout
	mo := fuse.MountOptions{
		FsName:        "layerfs",
		Name:          "layerfs",
		MaxWrite:      1 << 20,
		MaxBackground: 64,
		// Symlink targets only change through this daemon.
		EnableSymlinkCaching: true,
		// The kernel would otherwise ask for security.capability before
		// every write and chown to decide whether to drop it (52,000
		// GETXATTRs in one untar, research/fuse.md §5). Setattr honours
		// FATTR_KILL_SUIDGID, and chown by the daemon drops setuid bits and
		// capabilities on the upper as the kernel does for any chown.
		ExtraCapabilities: fuse.CAP_HANDLE_KILLPRIV_V2,
		Debug:             opts.Debug,
	}
	if rootless {
		// Without default_permissions the kernel leaves access checks to
		// the daemon (Access below): a user installing into a root-owned
		// tree must be able to write where the override says root owns.
	} else {
		mo.AllowOther = true
		mo.Options = []string{"default_permissions"}
		mo.DirectMountStrict = true
		// DirectMount's default flags are nosuid,nodev; a rootfs being
		// installed needs both setuid files and device nodes to work. Any
		// non-zero value replaces the default; MS_MGC_VAL means nothing.
		mo.DirectMountFlags = syscall.MS_MGC_VAL
	}
	if opts.Upper == "" {
		mo.Options = append(mo.Options, "ro")
	}
	if !rootless {
		// go-fuse opens /dev/fuse without O_CLOEXEC, and a process that
		// another goroutine starts meanwhile (the install of a build of
		// another spec in this process) would inherit the connection and
		// keep this mount alive. os/exec forks under the write side of
		// syscall.ForkLock: holding the read side until the descriptor is
		// close-on-exec shuts that window. (Rootless, go-fuse runs
		// fusermount3 itself, which takes the write side.)
		syscall.ForkLock.RLock()
	}
	srv, err := gofs.Mount(mountpoint, root, &gofs.Options{
		MountOptions:    mo,
		EntryTimeout:    &ttl,
		AttrTimeout:     &ttl,
		NegativeTimeout: &ttl,
		// Mode 0 is a real mode in a rootfs (/etc/shadow on some distros).
		NullPermissions: true,
		RootStableAttr:  &gofs.StableAttr{Ino: 1},
	})
	closeOnExec()
	if !rootless {
		syscall.ForkLock.RUnlock()
	}
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	// The root's layer objects are inode 1.
	if o, err := u.Lookup(""); err == nil {
		fsys.inos.alias(inoKey{o.Layer, o.Stat.Ino}, ident{ino: 1})
	}
	return &Server{Server: srv, Mountpoint: mountpoint, keep: keep}, nil
}

// Unmount unmounts the mount and waits until it no longer serves. As a
// normal user it runs fusermount3 itself, without LD_PRELOAD: go-fuse
// passes fusermount3 this process's environment and takes anything it
// prints for a failure, and under a fake root (pseudo, fakeroot: a
// bitbake task) the dynamic loader of the setuid fusermount3 prints that
// it ignores the preload, after a successful unmount.
func (s *Server) Unmount() error {
	if os.Geteuid() == 0 {
		return s.Server.Unmount()
	}
	if err := Unmount(s.Mountpoint, false); err != nil {
		return err
	}
	s.Server.Wait()
	return nil
}

// Access answers access(2) for rootless mounts, which have no
// default_permissions: the mount is the mounting user's alone, and that
// user stands for every owner the layers record.
func (n *node) Access(ctx context.Context, mask uint32) syscall.Errno {
	return 0
}

var _ gofs.NodeAccesser = (*node)(nil)

// clearStale unmounts a dead mount left at mountpoint (its daemon was
// killed: "transport endpoint is not connected") so it can be reused.
func clearStale(mountpoint string) error {
	var sfs unix.Statfs_t
	if err := unix.Statfs(mountpoint, &sfs); err == unix.ENOTCONN {
		if err := Unmount(mountpoint, true); err != nil {
			return err
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return fmt.Errorf("mountpoint %s: %w", mountpoint, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("mountpoint %s: not a directory", mountpoint)
	}
	return nil
}

// Unmount unmounts a layerfs mount; lazy detaches it even while busy or
// dead. As a normal user it goes through fusermount3.
func Unmount(mountpoint string, lazy bool) error {
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		// Any path walk through the mount (a stat by another process, a
		// `layerfs mounts`) makes it busy for an instant; only a busy
		// mount that stays busy is reported.
		var err error
		for try := 0; try < 20; try++ {
			if err = unix.Unmount(mountpoint, flags); err != unix.EBUSY {
				break
			}
			time.Sleep(25 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", mountpoint, err)
		}
		return nil
	}
	args := []string{"-u"}
	if lazy {
		args = append(args, "-z")
	}
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		if bin, err = exec.LookPath("fusermount"); err != nil {
			return errors.New("unmount: neither fusermount3 nor fusermount is installed")
		}
	}
	var out []byte
	for try := 0; try < 20; try++ {
		cmd := exec.Command(bin, append(args, mountpoint)...)
		cmd.Env = withoutPreload(os.Environ())
		if out, err = cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "busy") {
			break
		}
		time.Sleep(25 * time.Millisecond) // as for root, above
	}
	if err != nil {
		return fmt.Errorf("unmount %s: %s: %w", mountpoint, bytesTrim(out), err)
	}
	return nil
}

// withoutPreload is environ without LD_PRELOAD, which a setuid program's
// loader ignores with a complaint.
func withoutPreload(environ []string) []string {
	out := environ[:0:0]
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "LD_PRELOAD=") {
			out = append(out, kv)
		}
	}
	return out
}

func bytesTrim(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return string(b)
}

// closeOnExec marks every descriptor of the process close-on-exec. go-fuse
// opens /dev/fuse without it, and a process this one starts (a build's
// install command) would inherit the connection: killed, the daemon would
// then leave a mount that never dies, with that process waiting on it
// forever. Files passed on purpose (exec.Cmd.ExtraFiles) are dup'ed for
// the child and unaffected.
func closeOnExec() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}
