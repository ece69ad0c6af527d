package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/mountinfo"
)

// fullBelow is how little free space makes a filesystem full for
// NoSpace: a write that failed for want of space leaves less than that.
const fullBelow = 4 << 20

// NoSpace says, for an error message, that the cache's filesystem has no
// room left ("the filesystem of the cache, /var/cache (/dev/vdb), is
// full: 1.2M free"), or returns "" when it has room: when err is
// ENOSPC, or the filesystem's free space (or free inodes) has run out, a
// failure is likely that.
func (c *Cache) NoSpace(err error) string {
	var st unix.Statfs_t
	if unix.Statfs(c.dir, &st) != nil {
		return ""
	}
	free := st.Bavail
	if os.Geteuid() == 0 {
		free = st.Bfree // root writes into the reserved blocks too
	}
	bytes := free * uint64(st.Bsize)
	if !errors.Is(err, unix.ENOSPC) && bytes >= fullBelow && (st.Files == 0 || st.Ffree > 0) {
		return ""
	}
	what := FormatSize(int64(bytes)) + " free"
	if st.Files > 0 && st.Ffree == 0 {
		what = "no inode free"
	}
	return fmt.Sprintf("the filesystem of the cache, %s, is full: %s", describeFS(c.dir), what)
}

// describeFS names the filesystem path is on: its mount point and source
// (the deepest mount of path's device that contains it).
func describeFS(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return path
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	mounts, err := mountinfo.Read()
	if err != nil {
		return path
	}
	var best *mountinfo.Mount
	for i, m := range mounts {
		mp := m.Mountpoint
		if m.Dev == dev && (path == mp || mp == "/" || strings.HasPrefix(path, mp+"/")) && (best == nil || len(mp) >= len(best.Mountpoint)) {
			best = &mounts[i]
		}
	}
	if best == nil {
		return path
	}
	return best.Mountpoint + " (" + best.Source + ")"
}
