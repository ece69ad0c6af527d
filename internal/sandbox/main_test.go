package sandbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testutil"
)

func TestMain(m *testing.M) {
	Reexec()
	if os.Getenv(helperEnv) == "connect" {
		os.Exit(connectHelper(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// helperEnv, set to "connect" in a script, makes a copy of the test binary
// (helperBinary) connect to the Unix sockets its arguments name instead of
// running the tests: one tool that is there wherever the tests run.
const helperEnv = "_LAYERFS_SANDBOX_TEST_HELPER"

// connectHelper prints "CONNECTED ADDR" or "FAILED ADDR: ERROR" for each
// address, a path or an abstract name ("@name").
func connectHelper(addrs []string) int {
	for _, a := range addrs {
		c, err := net.DialTimeout("unix", a, 10*time.Second)
		if err != nil {
			fmt.Printf("FAILED %s: %v\n", a, err)
			continue
		}
		c.Close()
		fmt.Printf("CONNECTED %s\n", a)
	}
	return 0
}

// helperBinary copies the test binary where an isolated script can run it:
// it lies under /tmp, which the sandbox covers with its tmpfs.
func helperBinary(t *testing.T) string {
	t.Helper()
	return testutil.CopyTestBinary(t, hostDir(t))
}

// hangGuard bounds every run: a Run that hangs fails as a cancelled
// context long after any sane run has ended, never as a timing threshold.
const hangGuard = 2 * time.Minute

func testEnv() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C",
		"HOME=/tmp",
		"SOURCE_DATE_EPOCH=1700000000",
		"LAYERFS_LAYER=test",
	}
}

func run(t *testing.T, c Command) (Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), hangGuard)
	defer cancel()
	if c.Env == nil {
		c.Env = testEnv()
	}
	res, err := Run(ctx, c)
	if ctx.Err() != nil {
		t.Fatalf("Run hung until the guard's deadline: %v (tail %q)", err, res.Tail)
	}
	return res, err
}

// mustRun runs c and fails the test unless the script succeeds.
func mustRun(t *testing.T, c Command) Result {
	t.Helper()
	res, err := run(t, c)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, strings.Join(res.Tail, "\n"))
	}
	return res
}

// modes runs a subtest for each way of running a script; isolated ones
// need root.
func modes(t *testing.T, f func(t *testing.T, isolate bool)) {
	t.Run("direct", func(t *testing.T) { f(t, false) })
	t.Run("isolated", func(t *testing.T) {
		testutil.RequireRoot(t)
		f(t, true)
	})
}

// uniqueSleep is a sleep argument no other process on the machine has, to
// find the sleeps a test started among the host's processes.
func uniqueSleep() string {
	return strconv.Itoa(500000 + rand.IntN(400000))
}

// background is a script fragment that starts `sleep arg` in the
// background and returns once the sleep runs, so that a test finding no
// such sleep afterwards proves that it was killed, not that it had not
// started yet.
func background(arg string) string {
	return "sleep " + arg + ` & p=$!
while :; do case $(readlink /proc/$p/exe) in */sleep) break;; esac; sleep 0.01; done
`
}

// sleepers lists the host's processes (zombies aside) running `sleep arg`.
func sleepers(t *testing.T, arg string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue // gone meanwhile
		}
		if strings.Contains(string(cmdline), "sleep\x00"+arg+"\x00") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killSleepers cleans up after a test whose kill failed.
func killSleepers(arg string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(cmdline), "sleep\x00"+arg+"\x00") {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				p, _ := os.FindProcess(pid)
				p.Kill()
			}
		}
	}
}

// assertGone checks that the sleeps a run left behind are gone. An
// isolated run guarantees it when Run returns (the pid namespace is torn
// down first); a direct run has sent SIGKILL to the group, which the kernel
// delivers asynchronously.
func assertGone(t *testing.T, arg string, isolate bool) {
	t.Helper()
	if !isolate {
		waitGone(t, arg)
		return
	}
	if left := sleepers(t, arg); len(left) > 0 {
		killSleepers(arg)
		t.Fatalf("sleep %s still running (pids %v) after Run returned", arg, left)
	}
}

// waitGone waits for SIGKILLed processes outside this process's control to
// vanish: kill(2) returns before they have died. The bound is a hang
// guard, not a measure.
func waitGone(t *testing.T, arg string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := sleepers(t, arg)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			killSleepers(arg)
			t.Fatalf("sleep %s still running (pids %v) after Run returned", arg, left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func lines(s string) []string {
	return strings.Split(strings.TrimRight(s, "\n"), "\n")
}

func quote(s string) string { return fmt.Sprintf("'%s'", strings.ReplaceAll(s, "'", `'\''`)) }
