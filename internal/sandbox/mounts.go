package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/mountinfo"
)

// setupMounts turns the mount namespace, a copy of the host's, into the
// sandbox's view (the package doc lists it): every host mount read-only and
// nodev, the writable paths as they are, fresh tmpfs on /tmp and /run, a
// minimal /dev of its own, a proc of the new pid namespace, and the host's
// named Unix sockets covered. The visible paths, where a fresh filesystem
// would hide them, are kept read-only.
func setupMounts(cfg initConfig) error {
	// Nothing done here may propagate back to the host's mounts.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}

	if err := detachFuseMounts(cfg.Writable); err != nil {
		return err
	}

	scratch := scratchDirs()
	covered := []string{"/dev"}
	for _, s := range scratch {
		covered = append(covered, s.path)
	}

	// The writable trees are cloned, detached, before anything covers
	// them (a mountpoint under /tmp), and attached again at the end, above
	// the read-only tree and the fresh filesystems. So are the visible
	// ones that those cover, read-only, and the device nodes of /dev.
	var clones, nodes []detached
	defer func() {
		for _, c := range slices.Concat(clones, nodes) {
			unix.Close(c.fd)
		}
	}()
	// The trees the caller made (a kernel overlayfs mount) arrived as
	// descriptors; they are attached with the clones.
	for i, p := range cfg.Trees {
		fd := firstTreeFd + i
		unix.CloseOnExec(fd)
		clones = append(clones, detached{path: p, fd: fd, dir: true})
	}
	for _, w := range cfg.Writable {
		// Its own mount only: the clone is detached when the tree goes
		// read-only, so mounts below a writable path keep the host's state.
		// Not nodev either (see the package doc).
		c, err := cloneMount(w, &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY}, 0)
		if err != nil {
			return fmt.Errorf("writable path: %w", err)
		}
		clones = append(clones, c)
	}
	for _, v := range cfg.Visible {
		if !slices.ContainsFunc(covered, func(d string) bool { return within(v, d) }) {
			continue // the read-only tree shows it
		}
		c, err := cloneMount(v, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NODEV}, unix.AT_RECURSIVE)
		if err != nil {
			return fmt.Errorf("working directory: %w", err)
		}
		clones = append(clones, c)
	}
	for _, name := range devNodes {
		p := "/dev/" + name
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
			continue // the host has none, and neither has the sandbox
		}
		// Read-only: writing a device needs no write access to its
		// mount, and a chmod must not reach the host's node.
		c, err := cloneMount(p, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NOEXEC}, 0)
		if err != nil {
			return fmt.Errorf("device node: %w", err)
		}
		nodes = append(nodes, c)
	}

	// The clones were made from the tree still read-write; it becomes
	// read-only now, they never do. A read-only mount still opens the
	// device nodes on it (the host's /dev, a chroot's): nodev.
	if err := unix.MountSetattr(unix.AT_FDCWD, "/", unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NODEV}); err != nil {
		return fmt.Errorf("make every mount read-only and nodev: %w", err)
	}
	for _, s := range scratch {
		if err := unix.Mount("tmpfs", s.path, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode="+s.mode); err != nil {
			return fmt.Errorf("mount a tmpfs on %s: %w", s.path, err)
		}
		for _, d := range s.dirs {
			if err := mkdirMode(filepath.Join(s.path, d), 0o777|os.ModeSticky); err != nil {
				return err
			}
		}
	}
	if err := setupDev(nodes); err != nil {
		return err
	}
	// Read-only: /proc/sys and friends are the host kernel's settings.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount proc on /proc: %w", err)
	}

	// Outer paths first, so that a writable path inside another one ends
	// up on top of it.
	sort.SliceStable(clones, func(i, j int) bool { return depth(clones[i].path) < depth(clones[j].path) })
	for _, c := range clones {
		if err := c.attach(); err != nil {
			return err
		}
	}
	if err := maskSockets(cfg.Sockets, cfg.Writable); err != nil {
		return err
	}
	// Last: the mount points above were made in it. Its submounts (shm,
	// pts, the nodes) keep their own state.
	if err := unix.MountSetattr(unix.AT_FDCWD, "/dev", 0, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
		return fmt.Errorf("make /dev read-only: %w", err)
	}
	return nil
}

// detached is a mount cloned from the host's tree, to be attached again at
// its path.
type detached struct {
	path string
	fd   int
	dir  bool
}

// cloneMount clones the tree of mounts at path (from a bind mount of it, if
// it is not a mountpoint) and sets attr on its top mount, or on them all
// with AT_RECURSIVE in flags.
func cloneMount(path string, attr *unix.MountAttr, flags uint) (detached, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return detached{}, fmt.Errorf("clone the mount of %s: %w", path, err)
	}
	c := detached{path: path, fd: fd}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|flags, attr); err != nil {
		unix.Close(fd)
		return detached{}, fmt.Errorf("set the mount attributes of %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return detached{}, fmt.Errorf("stat %s: %w", path, err)
	}
	c.dir = st.Mode&unix.S_IFMT == unix.S_IFDIR
	return c, nil
}

// attach mounts the clone at its path, making the mount point if needed.
func (c detached) attach() error {
	if err := mountTarget(c.path, c.dir); err != nil {
		return err
	}
	if err := unix.MoveMount(c.fd, "", unix.AT_FDCWD, c.path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach %s: %w", c.path, err)
	}
	return nil
}

// scratch is a directory that gets a fresh tmpfs.
type scratch struct {
	path string
	mode string   // of its root, as tmpfs's mode= option
	dirs []string // made in it, with mode 1777
}

// scratchDirs lists the directories that get a fresh tmpfs, resolved: /tmp
// (always, the scripts' scratch space), and /run and /var/run, where the
// host's daemons keep their sockets and state, where they are directories
// (the usual /var/run is a symlink to /run).
func scratchDirs() []scratch {
	tmp, err := filepath.EvalSymlinks("/tmp")
	if err != nil || tmp == "/" {
		tmp = "/tmp" // then the mount fails, saying why
	}
	dirs := []scratch{{path: tmp, mode: "1777"}}
	for _, d := range []string{"/run", "/var/run"} {
		r, err := filepath.EvalSymlinks(d)
		if err != nil || r == "/" || slices.ContainsFunc(dirs, func(s scratch) bool { return s.path == r }) {
			continue
		}
		if fi, err := os.Stat(r); err != nil || !fi.IsDir() {
			continue
		}
		// Debian's /var/lock is a symlink to /run/lock.
		dirs = append(dirs, scratch{path: r, mode: "755", dirs: []string{"lock"}})
	}
	return dirs
}

// devNodes are the host's device nodes that the sandbox's /dev holds, bound
// from the host's /dev.
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// setupDev puts a minimal /dev of its own on /dev: a tmpfs, nodev like
// everything else, holding the device nodes (cloned from the host's, each
// its own mount that is not nodev), the usual symlinks, a private devpts
// and a private tmpfs on /dev/shm. The host's /dev, with its disks, is
// covered.
func setupDev(nodes []detached) error {
	if err := unix.Mount("tmpfs", "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=755"); err != nil {
		return fmt.Errorf("mount a tmpfs on /dev: %w", err)
	}
	for _, n := range nodes {
		if err := n.attach(); err != nil {
			return err
		}
	}
	for name, target := range map[string]string{
		"fd":     "/proc/self/fd",
		"stdin":  "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1",
		"stderr": "/proc/self/fd/2",
		"ptmx":   "pts/ptmx",
	} {
		if err := os.Symlink(target, "/dev/"+name); err != nil {
			return fmt.Errorf("make /dev/%s: %w", name, err)
		}
	}
	if err := os.Mkdir("/dev/pts", 0o755); err != nil {
		return fmt.Errorf("make /dev/pts: %w", err)
	}
	// A new instance: the host's ptys are not the script's. gid 5 is the
	// tty group, as on the host.
	if err := unix.Mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"); err != nil {
		return fmt.Errorf("mount devpts on /dev/pts: %w", err)
	}
	// POSIX shared memory (Python's multiprocessing, some compilers).
	if err := os.Mkdir("/dev/shm", 0o755); err != nil {
		return fmt.Errorf("make /dev/shm: %w", err)
	}
	if err := unix.Mount("tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("mount a tmpfs on /dev/shm: %w", err)
	}
	return nil
}

// mkdirMode makes a directory with exactly mode, whatever the umask.
func mkdirMode(path string, mode os.FileMode) error {
	if err := os.Mkdir(path, mode); err != nil {
		return fmt.Errorf("make %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
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
	mounts, err := mountinfo.Read()
	if err != nil {
		return fmt.Errorf("list mounts: %w", err)
	}
	for _, m := range mounts {
		if m.FSType != "fuse" && m.FSType != "fuseblk" && !strings.HasPrefix(m.FSType, "fuse.") {
			continue
		}
		mp := m.Mountpoint
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
