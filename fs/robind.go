package fs

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// readOnlyLowers gives the daemon read-only views of the lower dirs, so
// that the kernel refuses a write to a lower even if the daemon's logic
// were wrong. Each lower is cloned as a detached mount (open_tree) and
// made read-only (mount_setattr): it belongs to no mount namespace, so
// nobody else sees it, and everything the daemon opens below it
// (passthrough backing files included) lives on a read-only mount. It
// returns the paths to use (/proc/self/fd/N) and the fds that keep the
// mounts alive. Only root can do this; others get the lowers as given.
func readOnlyLowers(lowers []string) ([]string, []*os.File, error) {
	if os.Geteuid() != 0 || len(lowers) == 0 {
		return lowers, nil, nil
	}
	paths := make([]string, len(lowers))
	files := make([]*os.File, 0, len(lowers))
	for i, l := range lowers {
		fd, err := unix.OpenTree(unix.AT_FDCWD, l, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err == nil {
			err = unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
			if err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, nil, fmt.Errorf("read-only mount of lower %s: %w", l, err)
		}
		files = append(files, os.NewFile(uintptr(fd), l))
		paths[i] = "/proc/self/fd/" + strconv.Itoa(fd)
	}
	return paths, files, nil
}
