package sandbox

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reexec must be called first thing in main, and in TestMain of every test
// binary that reaches Run with Isolate. In the sandbox's init (this binary
// re-executed by Run) it sets up the namespaces, runs the script and exits
// with its status, never returning; anywhere else it returns false at once.
func Reexec() bool {
	if isExec() {
		os.Exit(execMain())
	}
	if !isInit() {
		return false
	}
	os.Exit(initMain())
	return true // not reached
}

const (
	execArg0 = "layerfs-sandbox-exec"
	execEnv  = "_LAYERFS_SANDBOX_EXEC"
)

func isExec() bool {
	return len(os.Args) == 3 && os.Args[0] == execArg0 && os.Getenv(execEnv) == "1"
}

// execMain is the stage a direct (unisolated) install passes through: it
// marks every descriptor above stderr close-on-exec, whatever this
// process inherited, and becomes /bin/sh -c SCRIPT.
func execMain() int {
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		// Linux before 5.11: one by one.
		if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
			for _, e := range ents {
				if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
					unix.CloseOnExec(fd)
				}
			}
		}
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, execEnv+"=") })
	err := syscall.Exec("/bin/sh", []string{"sh", os.Args[1], os.Args[2]}, env)
	fmt.Fprintf(os.Stderr, "layerfs sandbox: exec /bin/sh: %v\n", err)
	return 127
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
	if err := setupMounts(cfg); err != nil {
		send(initReport{Setup: err.Error()})
		return initExitSetup
	}

	// Forwarded to the script; pid 1 would otherwise ignore them.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT)
	// The script runs at normal priority, whatever the caller yielded
	// (Command.YieldCPU): a child takes the nice value of the thread that
	// forks it, which is this one.
	runtime.LockOSThread()
	unix.Setpriority(unix.PRIO_PROCESS, 0, 0)
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
