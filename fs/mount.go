package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

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
	// NoSync skips the fsyncs of files in the union (FUSE: FSYNC is
	// answered at once; the kernel's overlayfs: volatile). For an upper
	// that is thrown away when its job dies and synced once, whole, when
	// it is kept (a build's, into the cache).
	NoSync bool
}

// minServeProcs is the fewest Go processors a process serving a FUSE
// mount runs with (see Mount).
const minServeProcs = 4

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
	u          *overlay.Union
	release    sync.Once
}

// Wait returns once the mount no longer serves, and lets go of the layer
// dirs.
func (s *Server) Wait() {
	s.Server.Wait()
	s.release.Do(func() {
		s.u.Close()
		for _, f := range s.keep {
			f.Close()
		}
	})
}

// Mount mounts the union of opts at mountpoint and serves it from this
// process until it is unmounted. As root it mounts directly, with setuid
// files and devices working and default_permissions; as another user it
// goes through fusermount3 and decides permissions itself.
func Mount(mountpoint string, opts Options) (_ *Server, err error) {
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
	var u *overlay.Union
	defer func() {
		if err != nil {
			if u != nil {
				u.Close()
			}
			for _, f := range keep {
				f.Close()
			}
		}
	}()
	fsys := &filesystem{rootless: rootless, passthrough: !rootless, timeout: opts.Timeout, noSync: opts.NoSync}
	// Rootless, every chown is recorded, even one to the daemon's own ids:
	// a commit that maps those ids to root (a rootless build, commit
	// --squash-owner) then keeps the owner the caller asked for, and a
	// commit that does not gives the same layer as before.
	u, err = overlay.NewUnion(overlay.UnionOptions{Lowers: lowers, Upper: opts.Upper, Work: opts.Work, Rootless: rootless, RecordChowns: rootless, OnCopyUp: fsys.copiedUp,
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
	// go-fuse reads requests on up to GOMAXPROCS threads (at least 2);
	// between requests the two a sequential client keeps busy are blocked
	// in read(2) on /dev/fuse. With no processor idle (GOMAXPROCS 2 on a
	// 2-CPU machine), the Go runtime's sysmon takes the processor of a
	// thread blocked for longer than 20 µs and wakes another thread to
	// hold it, which finds nothing to do: a thread wakeup, often on the
	// other CPU, for every request. With processors to spare the readers
	// keep theirs (BENCHMARKS.md, issue 14: an untar 13.4 s -> 11.8 s, the
	// daemon's CPU per request -20%). Never lowered: a larger machine has
	// them already.
	if runtime.GOMAXPROCS(0) < minServeProcs {
		runtime.GOMAXPROCS(minServeProcs)
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
	// Without default_permissions (rootless) the kernel leaves access
	// checks to the daemon (Access below): a user installing into a
	// root-owned tree must be able to write where the override says root
	// owns.
	if opts.Upper == "" && rootless {
		mo.Options = append(mo.Options, "ro")
	}
	// noatime, as fuse-overlayfs mounts: the kernel would otherwise mark a
	// directory's cached attributes stale at every readdir (and a file's
	// at every read), so that the next stat of it is a GETATTR: one per
	// directory in every walk of a tree (bench/mount.sh, BENCHMARKS.md
	// issue 14). The atimes a stat shows are the layer files' own, which
	// reads through the mount still update (passthrough reads are the
	// layer file's reads).
	if rootless {
		mo.Options = append(mo.Options, "noatime")
	}
	gopts := &gofs.Options{
		MountOptions:    mo,
		EntryTimeout:    &ttl,
		AttrTimeout:     &ttl,
		NegativeTimeout: &ttl,
		// Mode 0 is a real mode in a rootfs (/etc/shadow on some distros).
		NullPermissions: true,
		RootStableAttr:  &gofs.StableAttr{Ino: 1},
	}
	var srv *fuse.Server
	dirs := &noOpendirFS{RawFileSystem: gofs.NewNodeFS(root, gopts)}
	if rootless {
		srv, err = mountFusermount(mountpoint, dirs, gopts)
		// fusermount3 hands the connection back without close-on-exec.
		closeOnExec()
	} else {
		raw := &killFS{RawFileSystem: dirs, asked: &fsys.killRequests}
		srv, err = mountDirect(mountpoint, raw, root, gopts, opts.Upper == "")
	}
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	// The root's layer objects are inode 1.
	if o, err := u.Lookup(""); err == nil {
		fsys.inos.alias(inoKey{o.Layer, o.Stat.Ino}, ident{ino: 1})
	}
	return &Server{Server: srv, Mountpoint: mountpoint, keep: keep, u: u}, nil
}

// Unmount unmounts the mount and waits until it no longer serves. As a
// normal user it runs fusermount3 itself, without LD_PRELOAD: go-fuse
// passes fusermount3 this process's environment and takes anything it
// prints for a failure, and under a fake root (pseudo, fakeroot: a
// bitbake task) the dynamic loader of the setuid fusermount3 prints that
// it ignores the preload, after a successful unmount.
func (s *Server) Unmount() error {
	if err := Unmount(s.Mountpoint, false); err != nil {
		return err
	}
	s.Wait()
	return nil
}

// mountFusermount mounts as a user, through fusermount3 (go-fuse's
// fs.Mount, with raw in front of the node tree).
func mountFusermount(mountpoint string, raw fuse.RawFileSystem, opts *gofs.Options) (*fuse.Server, error) {
	srv, err := fuse.NewServer(raw, mountpoint, &opts.MountOptions)
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, err
	}
	return srv, nil
}

// mountDirect mounts as root: the mount(2) itself, on a /dev/fuse
// descriptor opened close-on-exec (no process this one starts, such as a
// parallel build's install, may inherit the connection and keep the mount
// alive), served by go-fuse through its /dev/fd/N form. Setuid files and
// device nodes work (a rootfs being installed needs both), and the kernel
// checks permissions (default_permissions).
//
// go-fuse's own mount would also open a file of the mount to poll it, so
// that the kernel learns at once that polling is not supported (the Go
// runtime's epoll of a file this process opens in the mount must not wait
// for a daemon thread: pollHack). That file is closed with a FLUSH, which
// the kernel waits for without end: a daemon killed between its open and
// close cannot exit, waiting on itself. The poll here goes to a file of
// this daemon's that is opened without flush (pollName).
func mountDirect(mountpoint string, raw fuse.RawFileSystem, root *node, opts *gofs.Options, readOnly bool) (*fuse.Server, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,max_read=%d,allow_other,default_permissions", fd, opts.MaxWrite)
	flags := uintptr(unix.MS_NOATIME) // see Mount
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(opts.FsName, mountpoint, "fuse."+opts.Name, flags, data); err != nil {
		unix.Close(fd)
		return nil, err
	}
	srv, err := fuse.NewServer(raw, "/dev/fd/"+strconv.Itoa(fd), &opts.MountOptions)
	if err != nil {
		unix.Unmount(mountpoint, unix.MNT_DETACH)
		unix.Close(fd)
		return nil, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		unix.Unmount(mountpoint, unix.MNT_DETACH)
		return nil, err
	}
	if err := pollHack(mountpoint, root); err != nil {
		Unmount(mountpoint, true)
		srv.Wait()
		return nil, err
	}
	return srv, nil
}

// pollHack makes the kernel ask the daemon to poll a file of the mount,
// which go-fuse answers ENOSYS: from then on the kernel never asks again.
// The file is pollName, a node of the root that exists only meanwhile and
// is opened without flush (see mountDirect). The OPEN and POLL go from
// this process to its own daemon, so they are made outside (see outside).
func pollHack(mountpoint string, root *node) error {
	name := fmt.Sprintf(".layerfs-poll-%d-%d", os.Getpid(), time.Now().UnixNano())
	root.fsys.pollName.Store(&name)
	defer root.fsys.pollName.Store(nil)
	path, err := unix.BytePtrFromString(filepath.Join(mountpoint, name))
	if err != nil {
		return fmt.Errorf("poll setup: %w", err)
	}
	fds := []unix.PollFd{{Events: unix.POLLIN}}
	if err := outside(func() error { return openAndPoll(path, fds) }); err != nil {
		return fmt.Errorf("poll setup: %w", err)
	}
	return nil
}

// openAndPoll opens path and polls it once, for pollHack, on the outsider
// thread, where nothing may allocate (see outside): what it needs comes
// made, and it answers an Errno, which fits an error without allocating.
func openAndPoll(path *byte, fds []unix.PollFd) error {
	atCwd := unix.AT_FDCWD
	fd, _, errno := unix.Syscall6(unix.SYS_OPENAT, uintptr(atCwd), uintptr(unsafe.Pointer(path)), uintptr(unix.O_RDONLY|unix.O_CLOEXEC), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	fds[0].Fd = int32(fd)
	unix.Poll(fds, 0)
	unix.Close(int(fd))
	return nil
}

// outsider is one OS thread of this process with a descriptor table of
// its own, holding nothing. A request this process makes to its own FUSE
// mount, if the process is killed (kill -9) while the request is with the
// daemon, waits for an answer forever: the daemon is gone, and the
// waiting thread keeps the /dev/fuse descriptor open, so the kernel never
// ends the connection and the process never exits. Made from outsider,
// the request holds no such descriptor: the rest of the process exits,
// the connection ends, and so does the wait. One thread for the process,
// which never exits: a thread that exits would take with it the children
// it had started that asked for a signal at their parent's death
// (Pdeathsig, as the sandbox's), hence the package-level state.
var outsider struct {
	once sync.Once
	err  error
	work chan func()
}

// outside runs f on the outsider thread, and returns its error. f makes
// raw system calls only (no os.File, no timer) and allocates nothing: the
// Go runtime's own descriptors are not in that thread's table, and an
// allocation can make f's goroutine end a garbage collection, whose
// restart of the world polls the runtime's epoll descriptor from this
// thread and dies of EBADF ("netpoll failed"), its message lost with
// stderr (the mount daemon exited with status 2 and an empty log).
func outside(f func() error) error {
	outsider.once.Do(func() {
		outsider.work = make(chan func())
		ready := make(chan error)
		go serveOutside(ready, nil)
		outsider.err = <-ready
	})
	if outsider.err != nil {
		return fmt.Errorf("a thread with descriptors of its own: %w", outsider.err)
	}
	done := make(chan error, 1)
	outsider.work <- func() { done <- f() }
	return <-done
}

// serveOutside becomes the outsider thread, says so on ready, and runs
// the work sent to it; locked, if set, is closed once this goroutine has
// a thread.
func serveOutside(ready chan<- error, locked chan<- struct{}) {
	runtime.LockOSThread() // for good: the thread is this goroutine's
	if locked != nil {
		close(locked)
	}
	if unix.Gettid() == unix.Getpid() {
		// This is the main thread, which must not be the outsider:
		// /proc/self/fd is the main thread's table, and the paths
		// /proc/self/fd/N that this process hands out (readOnlyLowers, a
		// build's layers still being stored) would all stop resolving. A
		// goroutine started while this one holds the main thread gets
		// another thread.
		l := make(chan struct{})
		go serveOutside(ready, l)
		<-l
		runtime.UnlockOSThread()
		return
	}
	err := unix.Unshare(unix.CLONE_FILES)
	if err == nil {
		err = unix.CloseRange(0, ^uint(0), 0)
	}
	ready <- err
	if err != nil {
		return
	}
	for w := range outsider.work {
		w()
	}
}

// pollNode is the file pollHack polls.
type pollNode struct{ gofs.Inode }

var _ gofs.NodeOpener = (*pollNode)(nil)

func (p *pollNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_NOFLUSH | fuse.FOPEN_DIRECT_IO, 0
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
