// Package sandbox runs the install command of `layerfs build`: a shell
// script in a process of its own (never inside the FUSE daemon that serves
// the mount it installs into), with a fixed environment, an optional
// timeout, and, as root, isolated from the host.
//
// Isolated (Command.Isolate, which needs root), the script runs in private
// mount, pid, network, UTS and IPC namespaces, where:
//
//   - Every host mount is read-only and nodev (a device node on it does
//     not open), except the Writable paths, which keep the host's state.
//   - /tmp and /run (and /var/run when it is a directory rather than the
//     usual symlink to /run) are fresh, empty tmpfs, but for /run/lock
//     (mode 1777; Debian's /var/lock leads there). A Writable path under
//     one of them stays visible above it, and so does the working
//     directory, read-only.
//   - /dev is a read-only tmpfs of the sandbox's own holding null, zero,
//     full, random, urandom and tty (the host's nodes, bound read-only),
//     the fd, stdin, stdout and stderr symlinks, a private devpts instance
//     on /dev/pts with ptmx a symlink to pts/ptmx, and a tmpfs on /dev/shm.
//     The host's disks and other devices are not in it.
//   - The host's named Unix sockets are out of reach (connect(2) needs no
//     write access): those under /run and /tmp are hidden by the tmpfs, and
//     every other path that a socket of the caller's network namespace is
//     bound at (as /proc/net/unix lists them) is covered with an empty
//     read-only file. Abstract sockets belong to a network namespace, and
//     the sandbox has its own. So a postinst's `systemctl restart` finds no
//     systemd, and D-Bus, docker.sock or an X server cannot be reached.
//   - /proc shows only the sandbox's processes, read-only.
//   - There is no network, not even loopback; the host name and System V
//     IPC are the sandbox's own.
//   - Whatever the script leaves running dies with it.
//
// This stops accidents, not a hostile script. It does not isolate:
//
//   - Root's powers: the script keeps every capability (so that a chroot
//     can mount proc and devpts), CAP_SYS_ADMIN included. It could remount
//     the tree read-write, unmount the tmpfs over /dev or /run or a socket's
//     cover, load modules, set the clock: a hostile root script escapes.
//   - Devices through the Writable paths, which are not nodev: package
//     managers make the image's device nodes there and use them (debootstrap
//     mknods dev/null in the target and chroots into it), so a node for a
//     host device that the script creates there, or that the image holds,
//     opens that device.
//   - A host socket reached by a name other than the one it was bound at (a
//     hard link, a bind mount elsewhere), bound at a relative path, or bound
//     in another network namespace (a container's) at a path the host's
//     tree shows.
//   - /sys (read-only), the users and groups, cgroups and resource limits
//     (only the timeout; the tmpfs use memory) are the host's.
//
// Without root the script runs in its own process group, with none of this.
//
// Isolation re-executes the running binary as the namespaces' init, so
// every program that calls Run with Isolate must call Reexec first thing in
// main (and in TestMain).
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Command is one install command.
type Command struct {
	Script string // run as /bin/sh -c Script
	// Dir is the working directory; empty means the caller's.
	Dir string
	// Env is the complete environment of the script: nothing of the
	// caller's is inherited, and nil means an empty one. (The shell itself
	// exports PWD.)
	Env []string
	// Timeout bounds the run; 0 means none. On expiry the whole process
	// tree is killed and Run returns an *ExitError whose TimedOut is true.
	Timeout time.Duration
	// Isolate runs the script in private mount, pid, network, UTS and IPC
	// namespaces, which needs root: the package doc says what it sees.
	// In short, the host's mounts are all read-only and nodev except
	// Writable; /tmp, /run, /dev/shm are private tmpfs (Dir stays visible,
	// read-only, if it lies under one); /dev is minimal; the host's Unix
	// sockets are out of reach; /proc shows only the sandbox's processes
	// (read-only); and there is no network at all, not even loopback.
	Isolate bool
	// Writable are the paths that stay writable inside an isolated run
	// (the mountpoint being installed into), device nodes included. They
	// must exist, and stay visible even when they lie under /tmp, /run or
	// /dev.
	Writable []string
	// Mounts are detached mount trees (open_tree, fsmount) that an
	// isolated run attaches at their paths in its own mount namespace,
	// writable (as the tree was made) and not nodev, above everything
	// else; they go away with the namespace, whatever happens to the
	// caller. The caller keeps its descriptors.
	Mounts []Mount
	// YieldCPU (isolated runs only: it takes root to get the priority
	// back) runs this process at the lowest priority while the command
	// runs, and the command at normal priority: what the caller does
	// meanwhile in the background (committing the layer below) takes only
	// the CPU the command leaves.
	YieldCPU bool
	// Output, if set, also receives stdout and stderr as they come. A
	// failing Output stops receiving; the command is not disturbed.
	Output io.Writer
}

// Mount is a detached mount tree and where a run attaches it.
type Mount struct {
	Path string // an existing directory
	Tree *os.File
}

// Result describes a finished run.
type Result struct {
	// ExitCode is the script's exit status: 128+N when signal N killed it
	// (as a shell reports it), -1 when Run killed it (timeout or
	// cancellation) or it never started.
	ExitCode int
	// Tail holds the last TailLines lines of stdout and stderr combined.
	Tail     []string
	Duration time.Duration
}

// TailLines is how many lines of output Result.Tail and ExitError.Tail keep.
const TailLines = 20

// ExitError reports a script that did not succeed: a non-zero exit, a
// signal, or the timeout.
type ExitError struct {
	Code    int            // as Result.ExitCode
	Signal  syscall.Signal // the signal that ended the script, 0 if it exited
	Timeout time.Duration  // non-zero: Run killed the script after this long
	Tail    []string       // the last lines of output
}

// TimedOut reports whether Run killed the script for its timeout.
func (e *ExitError) TimedOut() bool { return e.Timeout > 0 }

func (e *ExitError) Error() string {
	switch {
	case e.Timeout > 0:
		return fmt.Sprintf("timed out after %s", e.Timeout)
	case e.Signal != 0:
		return fmt.Sprintf("killed by signal %d", int(e.Signal))
	default:
		return fmt.Sprintf("exit status %d", e.Code)
	}
}

// ErrNeedRoot is returned (wrapped) for Isolate without root: silently
// running unisolated would let an install write to the host.
var ErrNeedRoot = errors.New("isolation needs root")

// waitDelay bounds how long Run waits for the output pipe after the script
// is gone: a daemon that escaped the kill (setsid without isolation) may
// hold it open for ever.
const waitDelay = 2 * time.Second

// errTimedOut is the cause of the timeout's context, telling it apart from
// the caller's cancellation.
var errTimedOut = errors.New("sandbox timeout")

// Run runs c and waits for it. What the script leaves running is killed
// when it exits: everything, isolated; without Isolate, what stayed in its
// process group (a daemon that called setsid escapes, and Run stops
// reading output after a short grace). Cancelling ctx kills the whole process tree, as the timeout does; Run then
// returns an error that wraps the context's cause. A script that fails
// gives an *ExitError; any other error means it could not be run as asked.
// The Result is filled in either way, as far as the run got.
func Run(ctx context.Context, c Command) (Result, error) {
	res := Result{ExitCode: -1}
	if c.Isolate && os.Geteuid() != 0 {
		return res, fmt.Errorf("sandbox: %w (euid %d)", ErrNeedRoot, os.Geteuid())
	}
	if c.Isolate && isInit() {
		// Without the hook the child runs the program's own main, and in
		// a test binary, the tests again: refuse before that can recurse.
		return res, errors.New("sandbox: this process is a sandbox init that Reexec did not take over: call sandbox.Reexec first in main and TestMain")
	}
	dir, err := resolveDir(c.Dir)
	if err != nil {
		return res, err
	}
	c.Dir = dir
	if c.Writable, err = resolveWritable(c.Writable); err != nil {
		return res, err
	}
	if len(c.Mounts) > 0 && !c.Isolate {
		return res, errors.New("sandbox: mounts are attached in an isolated run's namespace only")
	}
	c.Mounts = slices.Clone(c.Mounts)
	for i := range c.Mounts {
		p, err := resolveWritable([]string{c.Mounts[i].Path})
		if err != nil {
			return res, err
		}
		c.Mounts[i].Path = p[0]
	}
	if c.Env == nil {
		c.Env = []string{} // exec.Cmd inherits on nil
	}

	runCtx := ctx
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeoutCause(ctx, c.Timeout, errTimedOut)
		defer cancel()
	}
	out := &tail{out: c.Output}
	start := time.Now()
	var st outcome
	if c.Isolate {
		if c.YieldCPU {
			defer yieldCPU()()
		}
		st, err = runIsolated(runCtx, c, out)
	} else {
		st, err = runDirect(runCtx, c, out)
	}
	res.Duration = time.Since(start)
	res.Tail = out.Lines()
	if err != nil {
		return res, err
	}
	if st.killed {
		if context.Cause(runCtx) == errTimedOut && ctx.Err() == nil {
			return res, &ExitError{Code: -1, Signal: syscall.SIGKILL, Timeout: c.Timeout, Tail: res.Tail}
		}
		return res, fmt.Errorf("install command cancelled: %w", context.Cause(ctx))
	}
	res.ExitCode = st.code
	if st.signal != 0 {
		res.ExitCode = 128 + int(st.signal)
	}
	if res.ExitCode != 0 {
		return res, &ExitError{Code: res.ExitCode, Signal: st.signal, Tail: res.Tail}
	}
	return res, nil
}

// outcome is how the script ended.
type outcome struct {
	code   int
	signal syscall.Signal
	killed bool // by Run, for the timeout or cancellation
}

func resolveDir(dir string) (string, error) {
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("sandbox: working directory: %w", err)
		}
		return wd, nil
	}
	// Resolved here, on the host: an isolated run sees /tmp replaced, and a
	// symlink in it would lead elsewhere or nowhere.
	abs, err := filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", fmt.Errorf("sandbox: working directory %s: %w", dir, err)
	}
	return abs, nil
}

func resolveWritable(paths []string) ([]string, error) {
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err == nil {
			abs, err = filepath.EvalSymlinks(abs)
		}
		if err != nil {
			return nil, fmt.Errorf("sandbox: writable path %s: %w", p, err)
		}
		if abs == "/" {
			return nil, errors.New("sandbox: writable path /: nothing would stay read-only")
		}
		out = append(out, abs)
	}
	return out, nil
}

// runDirect runs the script as a child of this process, in a process group
// of its own so that the timeout, cancellation and the end of the script
// reach everything it started (short of a daemon that left the group).
func runDirect(ctx context.Context, c Command, out *tail) (outcome, error) {
	// Through this binary's exec stage (see Reexec), which closes every
	// descriptor the shell is not meant to have: a rootless FUSE
	// connection comes back from fusermount3 without close-on-exec, and a
	// parallel build's install must not inherit it.
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{execArg0, "-c", c.Script}
	cmd.Env = append(slices.Clone(c.Env), execEnv+"=1")
	cmd.Dir = c.Dir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = waitDelay

	// The group's id is the shell's pid, which stays reserved only until
	// the shell is reaped: every kill of the group happens before that,
	// under mu, and none after.
	var (
		mu     sync.Mutex
		reaped bool
		killed bool
	)
	killGroup := func() error {
		err := unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		if err == unix.ESRCH {
			return os.ErrProcessDone
		}
		return err
	}
	cmd.Cancel = func() error {
		mu.Lock()
		defer mu.Unlock()
		if reaped {
			return os.ErrProcessDone
		}
		killed = true
		return killGroup()
	}
	if err := cmd.Start(); err != nil {
		return outcome{}, fmt.Errorf("sandbox: start /bin/sh: %w", err)
	}
	// Wait for the shell to exit without reaping it, then kill what it
	// left behind in its group while its pid still names that group.
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			if err != nil {
				// Still reap it below; the group is killed all the same.
				err = fmt.Errorf("sandbox: wait for /bin/sh: %w", err)
			}
			mu.Lock()
			_ = killGroup() // ESRCH: nothing was left
			reaped = true
			mu.Unlock()
			if err != nil {
				_ = cmd.Wait()
				return outcome{}, err
			}
			break
		}
	}
	_ = cmd.Wait() // the outcome is in ProcessState; ErrWaitDelay only means output was cut
	if cmd.ProcessState == nil {
		return outcome{}, errors.New("sandbox: /bin/sh vanished without an exit status")
	}
	mu.Lock()
	defer mu.Unlock()
	return stateOutcome(cmd.ProcessState, killed), nil
}

// stateOutcome reads a process's end; killedByRun tells whether Run sent it
// SIGKILL, which only counts when that is what it died of.
func stateOutcome(ps *os.ProcessState, killedByRun bool) outcome {
	ws, _ := ps.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		if killedByRun && ws.Signal() == syscall.SIGKILL {
			return outcome{killed: true}
		}
		return outcome{signal: ws.Signal()}
	}
	return outcome{code: ws.ExitStatus()}
}
