package fs

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/mountinfo"
)

// MountInfo describes a layerfs mount, as `layerfs mounts` shows it.
type MountInfo struct {
	Mountpoint string   `json:"mountpoint"`
	Lowers     []string `json:"lowers"`
	Upper      string   `json:"upper,omitempty"`
	Workdir    string   `json:"workdir,omitempty"`
	ReadOnly   bool     `json:"read_only"`
	// Driver is "fuse" (a daemon serves it; also what records without a
	// driver are) or "kernel" (the kernel's overlayfs: no daemon).
	Driver string `json:"driver,omitempty"`
	// PID is the daemon's; 0 for a kernel mount.
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	// Alive: mounted, and the daemon answers. A dead mount is what a
	// killed daemon leaves ("transport endpoint is not connected"). A
	// kernel mount has no daemon: it is alive while it is mounted.
	Alive bool `json:"alive"`
	// Mounted: the kernel still lists the mount.
	Mounted bool `json:"mounted"`
}

// StateDir is where daemons record their mounts: /run/layerfs for root,
// $XDG_RUNTIME_DIR/layerfs (else /tmp/layerfs-UID) for other users.
func StateDir() string {
	if os.Geteuid() == 0 {
		return "/run/layerfs"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "layerfs")
	}
	return filepath.Join(os.TempDir(), "layerfs-"+strconv.Itoa(os.Geteuid()))
}

func stateFile(dir, mountpoint string) string {
	sum := sha256.Sum256([]byte(mountpoint))
	return filepath.Join(dir, hex.EncodeToString(sum[:8])+".json")
}

// LogFile is where the background daemon of mountpoint writes its log.
func LogFile(mountpoint string) string {
	return strings.TrimSuffix(stateFile(StateDir(), mountpoint), ".json") + ".log"
}

// Register records a serving mount; the returned func removes the record.
func Register(info MountInfo) (func(), error) {
	dir := StateDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return nil, err
	}
	p := stateFile(dir, info.Mountpoint)
	tmp := p + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return nil, err
	}
	return func() {
		// Only our own record: a new daemon may already own the name.
		if cur, err := readState(p); err == nil && cur.PID == info.PID {
			os.Remove(p)
		}
	}, nil
}

func readState(p string) (MountInfo, error) {
	var m MountInfo
	data, err := os.ReadFile(p)
	if err != nil {
		return m, err
	}
	return m, json.Unmarshal(data, &m)
}

// IsKernel reports whether the kernel's overlayfs serves the mount.
func (m MountInfo) IsKernel() bool { return m.Driver == string(DriverKernel) }

// mountTable lists the mounts of this mount namespace by mountpoint,
// with the driver of those known to be layerfs's by their type (FUSE
// mounts of type fuse.layerfs; overlayfs mounts whose source is
// KernelSource) and "" for the others: a kernel mount's record also
// names a read-only bind of its single lower, which is just a mount.
func mountTable() (map[string]Driver, error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	out := map[string]Driver{}
	for _, m := range mounts {
		var d Driver
		switch {
		case m.FSType == FsType:
			d = DriverFUSE
		case m.FSType == "overlay" && m.Source == KernelSource:
			d = DriverKernel
		}
		// Stacked mounts: the last line is the one on top.
		out[m.Mountpoint] = d
	}
	return out, nil
}

// List returns the layerfs mounts: those the kernel lists, with what their
// daemons recorded, and records whose mount is gone.
func List() ([]MountInfo, error) {
	return list("")
}

// InUse returns a test of whether a live layerfs mount uses a dir, as
// its upper or one of its lowers, or holds one of those below it: such a
// dir (a cache entry, say) must outlive a prune or a removal.
func InUse() (func(dir string) bool, error) {
	mounts, err := List()
	if err != nil {
		return nil, err
	}
	return func(dir string) bool {
		for _, m := range mounts {
			if !m.Mounted {
				continue
			}
			for _, p := range append([]string{m.Upper}, m.Lowers...) {
				if p != "" && (p == dir || strings.HasPrefix(p, dir+string(filepath.Separator))) {
					return true
				}
			}
		}
		return false
	}, nil
}

// list does List, for one mountpoint only when only is set: telling a
// mount alive takes a statfs of it, which makes a concurrent umount of
// that mount fail with EBUSY, so others are left alone.
func list(only string) ([]MountInfo, error) {
	// Records first, then the kernel's list: a daemon mounts, then
	// records, so a record read here has its mount in the list read after.
	byPoint := map[string]MountInfo{}
	ents, err := os.ReadDir(StateDir())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		m, err := readState(filepath.Join(StateDir(), e.Name()))
		if err == nil {
			byPoint[m.Mountpoint] = m
		}
	}
	mounted, err := mountTable()
	if err != nil {
		return nil, err
	}
	for mp, d := range mounted {
		if _, ok := byPoint[mp]; !ok && d != "" {
			byPoint[mp] = MountInfo{Mountpoint: mp, Driver: string(d)}
		}
	}
	out := make([]MountInfo, 0, len(byPoint))
	for mp, m := range byPoint {
		if only != "" && mp != only {
			continue
		}
		d, ok := mounted[mp]
		switch {
		case d != "":
			m.Mounted, m.Driver = true, string(d)
		case ok && m.IsKernel():
			m.Mounted = true // the read-only bind of a single lower
		}
		// Only the mount's own answer tells it dead (ENOTCONN once its
		// daemon is gone): a recorded pid may be one of another pid
		// namespace, and a mount may not be recorded yet (its daemon
		// mounts first). A kernel mount has no daemon to lose.
		m.Alive = m.Mounted && (m.IsKernel() || answers(mp))
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b MountInfo) int { return strings.Compare(a.Mountpoint, b.Mountpoint) })
	return out, nil
}

func pidAlive(pid int) bool {
	if pid <= 0 || unix.Kill(pid, 0) == unix.ESRCH {
		return false
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) STATE ...: comm may hold spaces and parentheses.
	if i := strings.LastIndexByte(string(data), ')'); i >= 0 && i+2 < len(data) {
		return data[i+2] != 'Z' && data[i+2] != 'X'
	}
	return true
}

// answers reports whether a mount's daemon serves it. statfs always
// reaches the daemon (attributes may be cached); a dead one gives ENOTCONN.
//
// A daemon that is alive but stuck never answers; after a while the mount
// counts as alive (it is not known dead), so that one stuck mount cannot
// hang every build's sweep. The statfs left waiting ends with the mount.
func answers(mountpoint string) bool {
	done := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		done <- unix.Statfs(mountpoint, &st)
	}()
	select {
	case err := <-done:
		return err != unix.ENOTCONN
	case <-time.After(2 * time.Second):
		return true
	}
}

// Find returns the layerfs mount at mountpoint.
func Find(mountpoint string) (MountInfo, bool, error) {
	all, err := list(mountpoint)
	if err != nil {
		return MountInfo{}, false, err
	}
	for _, m := range all {
		if m.Mountpoint == mountpoint {
			return m, true, nil
		}
	}
	return MountInfo{}, false, nil
}

// Forget removes the record of a mount.
func Forget(mountpoint string) {
	os.Remove(stateFile(StateDir(), mountpoint))
}

// ClearStale unmounts every dead layerfs mount and drops records of mounts
// that are gone. It returns the mountpoints it cleared.
func ClearStale() ([]string, error) {
	all, err := List()
	if err != nil {
		return nil, err
	}
	var cleared []string
	var errs []error
	for _, m := range all {
		if m.Alive {
			continue
		}
		if m.Mounted {
			if err := Unmount(m.Mountpoint, true); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		Forget(m.Mountpoint)
		cleared = append(cleared, m.Mountpoint)
	}
	return cleared, errors.Join(errs...)
}

// WaitGone waits until the daemon of a mount has exited.
func WaitGone(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for pidAlive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon %d still running after %v", pid, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
