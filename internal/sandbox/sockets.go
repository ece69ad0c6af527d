package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// hostSockets lists the paths the Unix sockets of this process's network
// namespace are bound at (read before the sandbox's own namespace has
// none): connect(2) needs no write access, so a read-only tree still leads
// to them.
func hostSockets() ([]string, error) {
	table, err := os.ReadFile("/proc/self/net/unix")
	if err != nil {
		return nil, fmt.Errorf("sandbox: list the host's Unix sockets: %w", err)
	}
	return parseUnixSockets(string(table)), nil
}

// parseUnixSockets returns the absolute paths of /proc/net/unix, each once:
// "Num RefCount Protocol Flags Type St Inode [Path]", the path as bound,
// not escaped, spaces and all. Abstract names (@name) are per network
// namespace, out of the sandbox's reach already; a relative path (bound
// relative to the binder's directory) cannot be found.
func parseUnixSockets(table string) []string {
	var paths []string
	seen := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		rest := line
		for range 7 {
			rest = strings.TrimLeft(rest, " ")
			i := strings.IndexByte(rest, ' ')
			if i < 0 {
				rest = ""
				break
			}
			rest = rest[i:]
		}
		p := strings.TrimPrefix(rest, " ")
		if !strings.HasPrefix(p, "/") || seen[p] {
			continue
		}
		seen[p] = true
		paths = append(paths, p)
	}
	return paths
}

// socketMask is the empty file mounted over the host's sockets: connect(2)
// to it is refused. It is unlinked once they are covered.
const socketMask = "/dev/.layerfs-socket-mask"

// maskSockets covers, in the sandbox's final view, each socket file that
// one of the host's sockets is bound at with an empty read-only file. Those
// that a tmpfs hides already (/run, /tmp) are gone from the view; those in
// a writable path are the script's own, and a mount there would be in its
// way.
func maskSockets(paths, writable []string) error {
	var targets []string
	seen := map[string]bool{}
	for _, p := range paths {
		// Not there (any more), or hidden: nothing to reach.
		r, err := filepath.EvalSymlinks(p)
		if err != nil || seen[r] || slices.ContainsFunc(writable, func(w string) bool { return within(r, w) }) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(r, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			continue // bound in another mount namespace, say
		}
		seen[r] = true
		targets = append(targets, r)
	}
	if len(targets) == 0 {
		return nil
	}
	if err := os.WriteFile(socketMask, nil, 0); err != nil {
		return fmt.Errorf("make the socket mask: %w", err)
	}
	err := coverWithMask(targets)
	if rerr := os.Remove(socketMask); err == nil && rerr != nil {
		err = fmt.Errorf("remove the socket mask: %w", rerr)
	}
	return err
}

func coverWithMask(targets []string) error {
	for _, t := range targets {
		c, err := cloneMount(socketMask, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}, 0)
		if err != nil {
			return fmt.Errorf("socket mask: %w", err)
		}
		err = unix.MoveMount(c.fd, "", unix.AT_FDCWD, t, unix.MOVE_MOUNT_F_EMPTY_PATH)
		unix.Close(c.fd)
		if err != nil {
			return fmt.Errorf("cover the host's socket %s: %w", t, err)
		}
	}
	return nil
}
