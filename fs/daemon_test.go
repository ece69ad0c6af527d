package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
)

// daemonEnv names what the test binary, run again by StartDaemon, does
// as a daemon (see testDaemon).
const daemonEnv = "LAYERFS_TEST_DAEMON"

func TestMain(m *testing.M) {
	if mode := os.Getenv(daemonEnv); mode != "" {
		os.Exit(testDaemon(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// testDaemon is a daemon as StartDaemon runs it: args are the
// mountpoint and, to serve, a lower and an upper.
func testDaemon(mode string, args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep := NewReporter(ReadyFD, Progress{})
	rep.Log("pid " + strconv.Itoa(os.Getpid()))
	switch mode {
	case "serve":
		rep.Warn("no image")
		if err := Serve(ctx, args[0], Options{Lowers: []string{args[1]}, Upper: args[2]}, rep); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	case "input":
		rep.Done(inputerr.New("layer 2: a path outside the layer"))
		return 2
	case "error":
		rep.Done(errors.New("cache: no space left"))
		return 1
	case "die":
		fmt.Fprintln(os.Stderr, "the daemon's last words")
		return 3
	case "hang":
		<-ctx.Done() // until StartDaemon stops it
		return 1
	}
	return 1
}

// progress records what StartDaemon passes on.
type progress struct {
	mu         sync.Mutex
	logs, warn []string
	pid        int
	onPid      func()
}

func (p *progress) opts() Progress {
	return Progress{
		Log: func(msg string) {
			p.mu.Lock()
			p.logs = append(p.logs, msg)
			if s, ok := strings.CutPrefix(msg, "pid "); ok {
				p.pid, _ = strconv.Atoi(s)
			}
			p.mu.Unlock()
			if p.onPid != nil {
				p.onPid()
			}
		},
		Warn: func(msg string) { p.mu.Lock(); p.warn = append(p.warn, msg); p.mu.Unlock() },
	}
}

func startTestDaemon(t *testing.T, ctx context.Context, mode string, p *progress, args ...string) error {
	t.Helper()
	t.Setenv(daemonEnv, mode)
	return StartDaemon(ctx, args[0], args, p.opts())
}

// A daemon that serves: StartDaemon returns once the mount serves and is
// recorded as the daemon's, with the daemon's progress passed on; the
// daemon ends and forgets the mount when someone else unmounts it, or
// when it is signalled.
func TestDaemonServes(t *testing.T) {
	testutil.RequireRoot(t)
	for _, end := range []string{"umount", "sigterm"} {
		t.Run(end, func(t *testing.T) {
			base := t.TempDir()
			mnt, lower, upper := filepath.Join(base, "mnt"), filepath.Join(base, "lower"), filepath.Join(base, "upper")
			mkdirs(t, mnt, lower, upper)
			t.Cleanup(func() { leaveNoMount(mnt) })
			if err := os.WriteFile(filepath.Join(lower, "f"), []byte("lower"), 0o644); err != nil {
				t.Fatal(err)
			}
			var p progress
			if err := startTestDaemon(t, context.Background(), "serve", &p, mnt, lower, upper); err != nil {
				t.Fatalf("StartDaemon: %v", err)
			}
			if p.pid == 0 || p.pid == os.Getpid() || len(p.warn) != 1 || p.warn[0] != "no image" {
				t.Fatalf("progress passed on: logs %q, warnings %q; want the daemon's pid and its warning", p.logs, p.warn)
			}
			m, ok, err := Find(mnt)
			if err != nil || !ok || !m.Alive || m.PID != p.pid || m.Upper != upper || m.ReadOnly {
				t.Fatalf("after StartDaemon, Find = %+v, %v, %v; want a live mount of daemon %d with upper %s", m, ok, err, p.pid, upper)
			}
			if got := readFile(t, filepath.Join(mnt, "f")); got != "lower" {
				t.Fatalf("through the mount f is %q, want the lower's", got)
			}
			if end == "umount" {
				err = Unmount(mnt, false)
			} else {
				err = syscall.Kill(p.pid, syscall.SIGTERM)
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := WaitGone(p.pid, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if m, ok, err := Find(mnt); err != nil || ok {
				t.Errorf("after the daemon ended, Find = %+v, %v, %v; want no record and no mount", m, ok, err)
			}
		})
	}
}

// A daemon that fails before it serves: the error it reports is
// StartDaemon's, an input error still one; one that exits without a
// word is an error that points at its log, which has its output.
func TestDaemonFailsBeforeReady(t *testing.T) {
	mnt := t.TempDir()
	t.Cleanup(func() { os.Remove(LogFile(mnt)) })
	var p progress
	err := startTestDaemon(t, context.Background(), "input", &p, mnt)
	if err == nil || !inputerr.Is(err) || err.Error() != "layer 2: a path outside the layer" {
		t.Errorf("daemon reporting bad input: StartDaemon = %v (input error: %v); want its message, as an input error", err, inputerr.Is(err))
	}
	if p.pid == 0 {
		t.Errorf("the progress before the failure was not passed on: %q", p.logs)
	}
	err = startTestDaemon(t, context.Background(), "error", &p, mnt)
	if err == nil || inputerr.Is(err) || err.Error() != "cache: no space left" {
		t.Errorf("daemon reporting a failure: StartDaemon = %v (input error: %v); want its message, not an input error", err, inputerr.Is(err))
	}
	err = startTestDaemon(t, context.Background(), "die", &p, mnt)
	if err == nil || !strings.Contains(err.Error(), "exited before serving") || !strings.Contains(err.Error(), LogFile(mnt)) {
		t.Errorf("daemon dying without a word: StartDaemon = %v; want it to say so and name %s", err, LogFile(mnt))
	}
	if got := readFile(t, LogFile(mnt)); !strings.Contains(got, "the daemon's last words") {
		t.Errorf("the daemon's log has %q, want what it printed", got)
	}
}

// A caller that gives up before the daemon serves stops the daemon.
func TestDaemonStoppedWhenCallerGivesUp(t *testing.T) {
	mnt := t.TempDir()
	t.Cleanup(func() { os.Remove(LogFile(mnt)) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := progress{onPid: cancel}
	err := startTestDaemon(t, ctx, "hang", &p, mnt)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("StartDaemon = %v, want context.Canceled", err)
	}
	if p.pid == 0 {
		t.Fatal("no pid reported")
	}
	// StartDaemon has waited for it: no zombie, no process.
	if pidAlive(p.pid) {
		t.Errorf("daemon %d still runs after StartDaemon gave up", p.pid)
	}
}

// leaveNoMount clears what a failed test may have left at mnt.
func leaveNoMount(mnt string) {
	if m, ok, _ := Find(mnt); ok && m.Mounted {
		Unmount(mnt, true)
	}
	Forget(mnt)
	os.Remove(LogFile(mnt))
}
