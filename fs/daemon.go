package fs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// A FUSE mount that outlives the command that made it is served by a
// daemon: StartDaemon runs this program again, in a session of its own,
// and the daemon, through a Reporter, tells it how its startup goes on a
// pipe, one line each: "log MSG" and "warn MSG" while it prepares, then
// "ok" once it serves, or "input ERR" or "error ERR". A daemon that
// exits without a last line failed in a way only its log tells.

// ReadyFD is the descriptor on which a daemon that StartDaemon runs finds
// its end of the pipe, for NewReporter.
const ReadyFD = 3

// Progress gets a starting daemon's log lines and warnings. Either may be
// nil.
type Progress struct {
	Log  func(string)
	Warn func(string)
}

func (p Progress) log(msg string) {
	if p.Log != nil {
		p.Log(msg)
	}
}

func (p Progress) warn(msg string) {
	if p.Warn != nil {
		p.Warn(msg)
	}
}

// StartDaemon runs this program with args as the daemon of mountpoint,
// its output going to LogFile(mountpoint), and returns once it serves.
// Until then what the daemon reports goes to p; the error it reports is
// returned as an input error when it was one. If ctx ends first, the
// daemon is stopped.
func StartDaemon(ctx context.Context, mountpoint string, args []string, p Progress) error {
	if m, ok, _ := Find(mountpoint); ok && m.Alive {
		return inputerr.New("%s: already a layerfs mount (daemon %d)", mountpoint, m.PID)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	if err := os.MkdirAll(StateDir(), 0o700); err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	logf, err := os.OpenFile(LogFile(mountpoint), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(self, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, logf, logf
	cmd.ExtraFiles = []*os.File{w} // ReadyFD
	// Its own session: the caller's terminal closing must not take the
	// mount with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	// Only the daemon holds the writing end now, so that its exit ends
	// the reading.
	w.Close()
	if err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	last, err := awaitReport(ctx, r, p)
	if err != nil {
		stopDaemon(cmd, mountpoint)
		return err
	}
	if last == "ok" {
		cmd.Process.Release()
		return nil
	}
	cmd.Wait()
	if msg, ok := strings.CutPrefix(last, "input "); ok {
		return inputerr.New("%s", msg)
	}
	if msg, ok := strings.CutPrefix(last, "error "); ok {
		return errors.New(msg)
	}
	return fmt.Errorf("the daemon exited before serving (log: %s)", LogFile(mountpoint))
}

// awaitReport passes the daemon's log and warn lines on to p and returns
// its last line: "" when it closed the pipe without one. Until the
// daemon serves, an interrupt (applying an image's layers takes a while)
// is the caller's to act on: ctx's end is returned as the error.
func awaitReport(ctx context.Context, r io.Reader, p Progress) (string, error) {
	lines, stop := make(chan string), make(chan struct{})
	defer close(stop)
	go func() {
		defer close(lines)
		br := bufio.NewReader(r)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				select {
				case lines <- strings.TrimSuffix(line, "\n"):
				case <-stop:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case l, ok := <-lines:
			if !ok {
				return "", nil
			}
			if msg, ok := strings.CutPrefix(l, "log "); ok {
				p.log(msg)
				continue
			}
			if msg, ok := strings.CutPrefix(l, "warn "); ok {
				p.warn(msg)
				continue
			}
			return strings.TrimSpace(l), nil
		}
	}
}

// stopDaemon ends a daemon that has not reported ready: SIGTERM lets it
// abort what it prepares (leaving a cache clean) or unmount what it just
// mounted; one that does not go is killed, and its dead mount cleared.
func stopDaemon(cmd *exec.Cmd, mountpoint string) {
	cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	if m, ok, _ := Find(mountpoint); ok && m.Mounted && !m.Alive {
		Unmount(mountpoint, true)
		Forget(mountpoint)
	}
}

// Reporter is a daemon's end of the pipe to the command that started it
// (see StartDaemon). What it reports also goes to echo: the daemon's own
// log, or, in the foreground, the user.
type Reporter struct {
	pipe *os.File // nil: no one waits for this daemon
	echo Progress
}

// NewReporter reports on descriptor fd (ReadyFD for a daemon that
// StartDaemon started; negative for none) and to echo.
func NewReporter(fd int, echo Progress) *Reporter {
	r := &Reporter{echo: echo}
	if fd >= 0 {
		r.pipe = os.NewFile(uintptr(fd), "ready")
	}
	return r
}

func (r *Reporter) line(kind, msg string) {
	if r.pipe != nil {
		io.WriteString(r.pipe, kind+" "+strings.ReplaceAll(msg, "\n", " ")+"\n")
	}
}

// Log reports a line of progress.
func (r *Reporter) Log(msg string) {
	r.echo.log(msg)
	r.line("log", msg)
}

// Warn reports a warning.
func (r *Reporter) Warn(msg string) {
	r.echo.warn(msg)
	r.line("warn", msg)
}

// Write logs each line written, for progress that comes as an
// io.Writer.
func (r *Reporter) Write(p []byte) (int, error) {
	for l := range strings.Lines(string(p)) {
		r.Log(strings.TrimSuffix(l, "\n"))
	}
	return len(p), nil
}

// Done ends the startup: err nil says the daemon serves. The pipe is
// closed, so that the command that waits for it can return.
func (r *Reporter) Done(err error) {
	if r.pipe == nil {
		return
	}
	switch {
	case err == nil:
		io.WriteString(r.pipe, "ok\n")
	case inputerr.Is(err):
		r.line("input", err.Error())
	default:
		r.line("error", err.Error())
	}
	r.pipe.Close()
	r.pipe = nil
}

// Serve mounts opts at mountpoint with FUSE and serves it from this
// process, as the mount's daemon: it records the mount, reports on rep
// that it serves (or why it could not mount), and returns once the mount
// is gone, unmounted by someone else or by Serve when ctx ends: cleanly
// if nothing uses it, else lazily, and then only once its last user has
// let go, so that a process that still uses it keeps its files.
func Serve(ctx context.Context, mountpoint string, opts Options, rep *Reporter) error {
	s, err := start(mountpoint, opts, Choice{Driver: DriverFUSE}, true)
	if err != nil {
		err = fmt.Errorf("mount %s: %w", mountpoint, err)
		rep.Done(err)
		return err
	}
	rep.Done(nil)
	select {
	case <-ctx.Done():
		// A signalled daemon must go away either way.
		s.unmount()
	case <-s.served:
	}
	<-s.served
	s.forget()
	return nil
}

// HoldKernel keeps the kernel's overlayfs mount at mountpoint (made by
// MountKernel) for a command in the foreground: until ctx ends, when it
// unmounts it (lazily if busy), or until someone else unmounts it.
// Either way the mount's record is gone after.
func HoldKernel(ctx context.Context, mountpoint string) {
	stop := make(chan struct{})
	gone := make(chan struct{})
	go func() { WaitUnmounted(mountpoint, stop); close(gone) }()
	select {
	case <-ctx.Done():
	case <-gone:
	}
	close(stop)
	if m, ok, _ := Find(mountpoint); ok && m.Mounted {
		if err := Unmount(mountpoint, false); err != nil {
			Unmount(mountpoint, true)
		}
	}
	Forget(mountpoint)
}
