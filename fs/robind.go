package fs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// RobindCommand is the hidden subcommand that runs RobindHelper.
const RobindCommand = "__robind"

// readOnlyLowers gives the daemon read-only views of the lower dirs, so
// that the kernel refuses a write to a lower even if the daemon's logic
// were wrong: a helper in a private mount namespace bind-mounts each lower
// read-only onto itself and hands back directory fds opened through those
// mounts. Everything the daemon opens below them (passthrough backing
// files included) lives on a read-only mount. The host sees no new mount.
// It returns the paths to use (/proc/self/fd/N) and the fds to keep open.
// Only root can do this; others get the lowers as given.
func readOnlyLowers(lowers []string) ([]string, []*os.File, error) {
	if os.Geteuid() != 0 || len(lowers) == 0 {
		return lowers, nil, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	ours := os.NewFile(uintptr(pair[0]), "robind")
	theirs := os.NewFile(uintptr(pair[1]), "robind-helper")
	defer ours.Close()
	cmd := exec.Command(self, append([]string{RobindCommand}, lowers...)...)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	theirs.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("read-only lower mounts: %v: %s", err, bytesTrim(out))
	}
	buf := make([]byte, 16)
	oob := make([]byte, unix.CmsgSpace(4*len(lowers)))
	_, oobn, _, _, err := unix.Recvmsg(int(ours.Fd()), buf, oob, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("read-only lower mounts: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, nil, errors.New("read-only lower mounts: no fds received")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != len(lowers) {
		return nil, nil, fmt.Errorf("read-only lower mounts: got %d fds for %d lowers", len(fds), len(lowers))
	}
	paths := make([]string, len(fds))
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), lowers[i])
		paths[i] = "/proc/self/fd/" + strconv.Itoa(fd)
	}
	return paths, files, nil
}

// RobindHelper runs in the helper process, in its own mount namespace
// (Go made its mounts private): it makes each dir a read-only bind mount
// of itself, opens it, and sends the fds over the socket at fd 3.
func RobindHelper(dirs []string) error {
	fds := make([]int, 0, len(dirs))
	for _, d := range dirs {
		if err := unix.Mount(d, d, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", d, err)
		}
		if err := unix.Mount("", d, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("remount %s read-only: %w", d, err)
		}
		fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", d, err)
		}
		fds = append(fds, fd)
	}
	return unix.Sendmsg(3, []byte{0}, unix.UnixRights(fds...), nil, 0)
}
