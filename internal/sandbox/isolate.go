package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The sandbox's init is this binary, re-executed with this argv[0] and an
// environment of this one variable; Reexec recognises it by both.
const (
	initArg0 = "layerfs-sandbox-init"
	initEnv  = "_LAYERFS_SANDBOX_INIT"
)

// The init's extra file descriptors: its configuration (a memfd holding
// initConfig as JSON), the pipe it reports on (one initReport), and from
// firstTreeFd on the trees of Command.Mounts.
const (
	configFd    = 3
	reportFd    = 4
	firstTreeFd = 5
)

// initExitSetup is the init's exit status when it could not set up.
const initExitSetup = 125

// cloneFlags are the namespaces of an isolated run. UTS and IPC come with
// mount, pid and network: a script could otherwise still set the host's
// name or fill its System V IPC.
const cloneFlags = unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC

// initConfig is what the init needs to know; the command's environment
// travels here, not in the init's own, so that it is exactly Command.Env.
type initConfig struct {
	Script   string   `json:"script"`
	Dir      string   `json:"dir"`
	Env      []string `json:"env"`
	Writable []string `json:"writable"`
	// Trees are attached at these paths: the i-th from fd firstTreeFd+i.
	Trees   []string `json:"trees,omitempty"`
	Visible []string `json:"visible"` // kept read-only where a tmpfs covers them
	Sockets []string `json:"sockets"` // the host's, to cover
}

// initReport is how the script ended, or why it never started.
type initReport struct {
	Setup  string `json:"setup,omitempty"`
	Code   int    `json:"code"`
	Signal int    `json:"signal,omitempty"`
}

func isInit() bool {
	return len(os.Args) > 0 && os.Args[0] == initArg0 && os.Getenv(initEnv) == "1"
}

// runIsolated starts the init in new namespaces and waits for it. Killing
// the init, the pid namespace's pid 1, makes the kernel kill everything else
// in it before the init can be reaped, so the tree is gone when Wait returns.
func runIsolated(ctx context.Context, c Command, out *tail) (outcome, error) {
	conf := initConfig{Script: c.Script, Dir: c.Dir, Env: c.Env, Writable: c.Writable}
	for _, m := range c.Mounts {
		conf.Trees = append(conf.Trees, m.Path)
	}
	// The working directory (a spec's, with the packages it names) stays
	// visible even under /tmp or /run.
	if !slices.ContainsFunc(slices.Concat(c.Writable, conf.Trees), func(w string) bool { return within(c.Dir, w) }) {
		conf.Visible = []string{c.Dir}
	}
	sockets, err := hostSockets()
	if err != nil {
		return outcome{}, err
	}
	conf.Sockets = sockets
	cfg, err := configFile(conf)
	if err != nil {
		return outcome{}, err
	}
	defer cfg.Close()
	reportR, reportW, err := os.Pipe()
	if err != nil {
		return outcome{}, fmt.Errorf("sandbox: report pipe: %w", err)
	}
	defer reportR.Close()

	var killed atomic.Bool
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{initArg0}
	cmd.Env = []string{initEnv + "=1"}
	cmd.Dir = "/"
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.ExtraFiles = []*os.File{cfg, reportW} // configFd, reportFd
	for _, m := range c.Mounts {
		cmd.ExtraFiles = append(cmd.ExtraFiles, m.Tree) // firstTreeFd...
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: cloneFlags,
		Setsid:     true,
		Pdeathsig:  syscall.SIGKILL,
	}
	cmd.Cancel = func() error {
		killed.Store(true)
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = waitDelay
	err = cmd.Start()
	reportW.Close()
	if err != nil {
		return outcome{}, fmt.Errorf("sandbox: start the init in new namespaces: %w", err)
	}
	_ = cmd.Wait() // the outcome is in the report and ProcessState
	if cmd.ProcessState == nil {
		return outcome{}, errors.New("sandbox: the init vanished without an exit status")
	}

	// Everything that could hold the pipe's write end died with the
	// namespace; the deadline only guards against a kernel surprise.
	_ = reportR.SetReadDeadline(time.Now().Add(waitDelay))
	raw, err := io.ReadAll(reportR)
	if err != nil {
		return outcome{}, fmt.Errorf("sandbox: read the init's report: %w", err)
	}
	if len(raw) > 0 {
		var rep initReport
		if err := json.Unmarshal(raw, &rep); err != nil {
			return outcome{}, fmt.Errorf("sandbox: the init's report %q: %w", raw, err)
		}
		if rep.Setup != "" {
			return outcome{}, fmt.Errorf("sandbox setup: %s", rep.Setup)
		}
		return outcome{code: rep.Code, signal: syscall.Signal(rep.Signal)}, nil
	}
	st := stateOutcome(cmd.ProcessState, killed.Load())
	if st.killed {
		return st, nil
	}
	return outcome{}, fmt.Errorf("sandbox: the init ended (%s) without a report: is sandbox.Reexec called first in main (and TestMain)?", cmd.ProcessState)
}

// configFile puts the init's configuration in a memfd: unlike a pipe it
// never blocks the writer, whatever its size and whoever reads it.
func configFile(cfg initConfig) (*os.File, error) {
	data, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("sandbox: encode the init's config: %w", err)
	}
	fd, err := unix.MemfdCreate("layerfs-sandbox-config", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("sandbox: memfd for the init's config: %w", err)
	}
	f := os.NewFile(uintptr(fd), "layerfs-sandbox-config")
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("sandbox: write the init's config: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("sandbox: rewind the init's config: %w", err)
	}
	return f, nil
}
