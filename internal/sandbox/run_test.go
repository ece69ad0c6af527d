package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestEnvIsExactlyTheGivenOne(t *testing.T) {
	t.Setenv("LAYERFS_SANDBOX_TEST_LEAK", "leaked")
	modes(t, func(t *testing.T, isolate bool) {
		dir := t.TempDir()
		env := append(testEnv(), "WITH_SPACE=a b", "EMPTY=")
		res := mustRun(t, Command{Script: "env", Dir: dir, Env: env, Isolate: isolate, Writable: []string{dir}})
		var got []string
		for _, l := range res.Tail {
			// dash exports PWD whatever its environment; it must at least
			// be the directory asked for.
			if pwd, ok := strings.CutPrefix(l, "PWD="); ok {
				if pwd != dir {
					t.Errorf("PWD=%s, want %s", pwd, dir)
				}
				continue
			}
			got = append(got, l)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(env))
		if !slices.Equal(got, want) {
			t.Errorf("environment:\n got %q\nwant %q", got, want)
		}
	})
}

func TestNilEnvIsEmpty(t *testing.T) {
	t.Setenv("LAYERFS_SANDBOX_TEST_LEAK", "leaked")
	modes(t, func(t *testing.T, isolate bool) {
		// No PATH: only builtins. `export -p` lists what the shell exports.
		ctx, cancel := context.WithTimeout(t.Context(), hangGuard)
		defer cancel()
		res, err := Run(ctx, Command{Script: "export -p", Env: nil, Dir: "/", Isolate: isolate})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range res.Tail {
			if !strings.HasPrefix(l, "export PWD=") {
				t.Errorf("exported with a nil Env: %q", l)
			}
		}
	})
}

func TestExitStatusAndTail(t *testing.T) {
	modes(t, func(t *testing.T, isolate bool) {
		var streamed bytes.Buffer
		res, err := run(t, Command{Script: "echo a; echo b >&2; exit 3", Isolate: isolate, Output: &streamed})
		var ee *ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("err = %v, want an *ExitError", err)
		}
		if ee.Code != 3 || res.ExitCode != 3 || ee.Signal != 0 || ee.TimedOut() {
			t.Errorf("ExitError %+v, Result.ExitCode %d: want code 3 only", ee, res.ExitCode)
		}
		if ee.Error() != "exit status 3" {
			t.Errorf("Error() = %q", ee.Error())
		}
		if want := []string{"a", "b"}; !slices.Equal(ee.Tail, want) || !slices.Equal(res.Tail, want) {
			t.Errorf("tails %q %q, want %q", ee.Tail, res.Tail, want)
		}
		if streamed.String() != "a\nb\n" {
			t.Errorf("Output got %q", streamed.String())
		}
	})
}

func TestTailKeepsTheLastLines(t *testing.T) {
	modes(t, func(t *testing.T, isolate bool) {
		var streamed bytes.Buffer
		res := mustRun(t, Command{Script: "i=1; while [ $i -le 50 ]; do echo line$i; i=$((i+1)); done; printf unfinished",
			Isolate: isolate, Output: &streamed})
		var want []string
		for i := 32; i <= 50; i++ {
			want = append(want, fmt.Sprintf("line%d", i))
		}
		want = append(want, "unfinished")
		if !slices.Equal(res.Tail, want) {
			t.Errorf("tail %q\nwant %q", res.Tail, want)
		}
		if n := strings.Count(streamed.String(), "\n"); n != 50 {
			t.Errorf("Output got %d lines, want all 50", n)
		}
		if res.ExitCode != 0 {
			t.Errorf("ExitCode %d", res.ExitCode)
		}
	})
}

func TestKilledBySignal(t *testing.T) {
	modes(t, func(t *testing.T, isolate bool) {
		res, err := run(t, Command{Script: "echo before; kill -9 $$", Isolate: isolate})
		var ee *ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("err = %v, want an *ExitError", err)
		}
		if ee.Error() != "killed by signal 9" || ee.TimedOut() || res.ExitCode != 137 {
			t.Errorf("err %q (%+v), ExitCode %d", ee, ee, res.ExitCode)
		}
		if !slices.Equal(ee.Tail, []string{"before"}) {
			t.Errorf("tail %q", ee.Tail)
		}
	})
}

func TestTimeoutKillsTheTree(t *testing.T) {
	modes(t, func(t *testing.T, isolate bool) {
		arg := uniqueSleep()
		// A background sleep and one in a subshell: the tree, not just
		// the shell, must go.
		res, err := run(t, Command{Script: background(arg) + "(sleep " + arg + "); echo not reached",
			Timeout: 300 * time.Millisecond, Isolate: isolate})
		var ee *ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("err = %v, want an *ExitError", err)
		}
		if !ee.TimedOut() || ee.Error() != "timed out after 300ms" || res.ExitCode != -1 {
			t.Errorf("err %q (%+v), ExitCode %d", ee, ee, res.ExitCode)
		}
		assertGone(t, arg, isolate)
	})
}

func TestCancelKillsTheTree(t *testing.T) {
	modes(t, func(t *testing.T, isolate bool) {
		arg := uniqueSleep()
		ctx, cancel := context.WithCancel(t.Context())
		guard := time.AfterFunc(hangGuard, func() { t.Error("hang guard") })
		defer guard.Stop()
		// Cancelled once the script shows it is running.
		out := &callbackWriter{on: "running", f: cancel}
		res, err := Run(ctx, Command{Script: background(arg) + "echo running; sleep " + arg,
			Timeout: hangGuard, Env: testEnv(), Isolate: isolate, Output: out})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		var ee *ExitError
		if errors.As(err, &ee) {
			t.Errorf("a cancellation reported as %v", ee)
		}
		if res.ExitCode != -1 || !slices.Equal(res.Tail, []string{"running"}) {
			t.Errorf("result %+v", res)
		}
		assertGone(t, arg, isolate)
	})
}

// callbackWriter calls f once when what it is written contains on.
type callbackWriter struct {
	on   string
	f    func()
	seen bytes.Buffer
}

func (w *callbackWriter) Write(p []byte) (int, error) {
	w.seen.Write(p)
	if w.f != nil && strings.Contains(w.seen.String(), w.on) {
		w.f()
		w.f = nil
	}
	return len(p), nil
}

func TestBackgroundProcessesDieWithTheScript(t *testing.T) {
	modes(t, func(t *testing.T, isolate bool) {
		arg := uniqueSleep()
		// Run returns once the script has exited, not when the sleep would:
		// the guard's deadline is far below it.
		res := mustRun(t, Command{Script: background(arg) + "echo started", Isolate: isolate})
		if !slices.Equal(res.Tail, []string{"started"}) {
			t.Errorf("tail %q", res.Tail)
		}
		assertGone(t, arg, isolate)
	})
}

func TestDaemonHoldingOutputDoesNotHang(t *testing.T) {
	modes(t, func(t *testing.T, isolate bool) {
		arg := uniqueSleep()
		t.Cleanup(func() { killSleepers(arg) })
		dir := t.TempDir()
		// The daemon leaves the process group that Run kills (setsid) and
		// keeps stdout and stderr open; the script waits until it has left.
		script := `setsid sh -c 'echo $$ > ready; exec sleep ` + arg + `' &
while [ ! -s ready ]; do sleep 0.01; done
echo started`
		res := mustRun(t, Command{Script: script, Dir: dir, Isolate: isolate, Writable: []string{dir}})
		if !slices.Equal(res.Tail, []string{"started"}) {
			t.Errorf("tail %q", res.Tail)
		}
		if isolate {
			// The namespace's end reaches a daemon too.
			assertGone(t, arg, true)
		} else if len(sleepers(t, arg)) != 1 {
			t.Errorf("the daemon did not survive the script: the test proved nothing")
		}
	})
}

func TestMissingDirIsAnError(t *testing.T) {
	modes(t, func(t *testing.T, isolate bool) {
		_, err := run(t, Command{Script: "true", Dir: "/nonexistent/dir", Isolate: isolate})
		var ee *ExitError
		if err == nil || errors.As(err, &ee) || !strings.Contains(err.Error(), "/nonexistent/dir") {
			t.Errorf("err = %v, want one naming the dir", err)
		}
	})
}

func TestDirNotADirectoryIsNotAnExit(t *testing.T) {
	modes(t, func(t *testing.T, isolate bool) {
		// Found by Run, refused only when the shell starts: in the sandbox
		// that is after its setup, and reported as such.
		_, err := run(t, Command{Script: "true", Dir: "/etc/passwd", Isolate: isolate})
		var ee *ExitError
		if err == nil || errors.As(err, &ee) || !strings.Contains(err.Error(), "not a directory") {
			t.Errorf("err = %v, want a start error", err)
		}
		if isolate && err != nil && !strings.Contains(err.Error(), "sandbox setup: start /bin/sh in /etc/passwd") {
			t.Errorf("err = %v, want the init's report", err)
		}
	})
}

func TestIsolateWithoutRootIsRefused(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("runs unprivileged: as root isolation is allowed")
	}
	_, err := run(t, Command{Script: "true", Isolate: true})
	if !errors.Is(err, ErrNeedRoot) {
		t.Errorf("err = %v, want ErrNeedRoot", err)
	}
}
