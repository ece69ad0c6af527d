package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reexec must be called first thing in main, and in TestMain of every test
// binary that reaches Run with Isolate. In the sandbox's init (this binary
// re-executed by Run) it sets up the namespaces, runs the script and exits
// with its status, never returning; anywhere else it returns false at once.
func Reexec() bool {
	if !isInit() {
		return false
	}
	os.Exit(initMain())
	return true // not reached
}

// initMain is pid 1 of the sandbox's pid namespace. It runs the script as
// its child rather than exec'ing it: pid 1 must reap the orphans the
// script leaves, and a signal to it must reach the script.
func initMain() int {
	// Go opens nothing without O_CLOEXEC, but these two arrived as plain
	// inherited descriptors, which the script must not get.
	unix.CloseOnExec(configFd)
	unix.CloseOnExec(reportFd)
	report := os.NewFile(reportFd, "report")
	send := func(r initReport) {
		data, _ := json.Marshal(r)
		if _, err := report.Write(data); err != nil {
			fmt.Fprintf(os.Stderr, "layerfs sandbox init: report: %v\n", err)
		}
	}

	var cfg initConfig
	cfgFile := os.NewFile(configFd, "config")
	err := json.NewDecoder(cfgFile).Decode(&cfg)
	cfgFile.Close()
	if err != nil {
		send(initReport{Setup: fmt.Sprintf("read config: %v", err)})
		return initExitSetup
	}
	if err := setupMounts(cfg.Writable, cfg.Visible); err != nil {
		send(initReport{Setup: err.Error()})
		return initExitSetup
	}

	// Forwarded to the script; pid 1 would otherwise ignore them.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT)
	pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", cfg.Script}, &syscall.ProcAttr{
		Dir:   cfg.Dir,
		Env:   cfg.Env,
		Files: []uintptr{0, 1, 2},
	})
	if err != nil {
		send(initReport{Setup: fmt.Sprintf("start /bin/sh in %s: %v", cfg.Dir, err)})
		return initExitSetup
	}
	go func() {
		for s := range sigs {
			_ = unix.Kill(pid, s.(syscall.Signal))
		}
	}()

	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			send(initReport{Setup: fmt.Sprintf("wait for /bin/sh: %v", err)})
			return initExitSetup
		}
		if got != pid {
			continue // an orphan of the script, reaped
		}
		// Whatever the script left running dies with this process: the
		// kernel kills the rest of a pid namespace when its init exits.
		if ws.Signaled() {
			send(initReport{Code: -1, Signal: int(ws.Signal())})
			return 128 + int(ws.Signal())
		}
		send(initReport{Code: ws.ExitStatus()})
		return ws.ExitStatus()
	}
}

// setupMounts turns the mount namespace, a copy of the host's, into the
// sandbox's view: everything read-only, the writable paths not, fresh
// tmpfs on /tmp and /dev/shm and a proc of the new pid namespace. The
// visible paths, where the tmpfs would hide them, are kept read-only.
func setupMounts(writable, visible []string) error {
	// Nothing done here may propagate back to the host's mounts.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}

	if err := detachFuseMounts(writable); err != nil {
		return err
	}

	// The writable trees are cloned, detached, before anything covers
	// them (a mountpoint under /tmp), and attached again at the end, above
	// the read-only tree and the tmpfs. So are the visible ones that a
	// tmpfs covers, read-only.
	type clone struct {
		path string
		fd   int
		dir  bool
	}
	clones := make([]clone, 0, len(writable)+len(visible))
	defer func() {
		for _, c := range clones {
			unix.Close(c.fd)
		}
	}()
	add := func(path string, attr *unix.MountAttr, flags uint) error {
		fd, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err != nil {
			return fmt.Errorf("clone the mount of %s: %w", path, err)
		}
		clones = append(clones, clone{path: path, fd: fd})
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|flags, attr); err != nil {
			return fmt.Errorf("set the mount attributes of %s: %w", path, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("stat %s: %w", path, err)
		}
		clones[len(clones)-1].dir = st.Mode&unix.S_IFMT == unix.S_IFDIR
		return nil
	}
	for _, w := range writable {
		// Its own mount only: the clone is detached when the tree goes
		// read-only, so mounts below a writable path keep the host's state.
		if err := add(w, &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY}, 0); err != nil {
			return fmt.Errorf("writable path: %w", err)
		}
	}
	for _, v := range visible {
		if !within(v, "/tmp") && !within(v, "/dev/shm") {
			continue // the read-only tree shows it
		}
		if err := add(v, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}, unix.AT_RECURSIVE); err != nil {
			return fmt.Errorf("working directory: %w", err)
		}
	}
	// The clones were made from the tree still read-write; it becomes
	// read-only now, they never do.
	if err := unix.MountSetattr(unix.AT_FDCWD, "/", unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
		return fmt.Errorf("make every mount read-only: %w", err)
	}
	if err := unix.Mount("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("mount a tmpfs on /tmp: %w", err)
	}
	// POSIX shared memory (Python's multiprocessing, some compilers)
	// needs a writable /dev/shm; the host's is read-only now.
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if err := unix.Mount("tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
			return fmt.Errorf("mount a tmpfs on /dev/shm: %w", err)
		}
	}
	// Read-only: /proc/sys and friends are the host kernel's settings.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount proc on /proc: %w", err)
	}

	// Outer paths first, so that a writable path inside another one ends
	// up on top of it.
	sort.SliceStable(clones, func(i, j int) bool { return depth(clones[i].path) < depth(clones[j].path) })
	for _, c := range clones {
		if err := mountTarget(c.path, c.dir); err != nil {
			return err
		}
		if err := unix.MoveMount(c.fd, "", unix.AT_FDCWD, c.path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("attach %s: %w", c.path, err)
		}
	}
	return nil
}

func depth(p string) int { return strings.Count(filepath.Clean(p), "/") }

// mountTarget makes sure there is something to attach a cloned path on:
// under a fresh tmpfs there is not, and its parents are missing too.
func mountTarget(path string, dir bool) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("mount point %s: %w", path, err)
	}
	parent := path
	if !dir {
		parent = filepath.Dir(path)
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("mount point %s: %w", path, err)
	}
	if !dir {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("mount point %s: %w", path, err)
		}
		f.Close()
	}
	return nil
}

// detachFuseMounts drops this namespace's copies of FUSE mounts that the
// script has no business with: a copy keeps the filesystem alive after the
// host unmounts it, so its daemon (another build's layerfs) would go on
// serving until this sandbox ends. Mounts on, above or below a writable
// path stay.
func detachFuseMounts(writable []string) error {
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("list mounts: %w", err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		mp, fstype, ok := parseMountinfo(line)
		if !ok || (fstype != "fuse" && fstype != "fuseblk" && !strings.HasPrefix(fstype, "fuse.")) {
			continue
		}
		if slices.ContainsFunc(writable, func(w string) bool { return within(w, mp) || within(mp, w) }) {
			continue
		}
		// Already gone with a detached parent: fine.
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			return fmt.Errorf("detach FUSE mount %s: %w", mp, err)
		}
	}
	return nil
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	return path == dir || dir == "/" || strings.HasPrefix(path, dir+"/")
}

// parseMountinfo returns the mount point and filesystem type of a line of
// /proc/self/mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] -
// FSTYPE SOURCE SUPEROPTS".
func parseMountinfo(line string) (mountpoint, fstype string, ok bool) {
	f := strings.Fields(line)
	sep := slices.Index(f, "-")
	if len(f) < 5 || sep < 0 || sep+1 >= len(f) {
		return "", "", false
	}
	return unescapeMountinfo(f[4]), f[sep+1], true
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space,
// and tab, newline and backslash).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
