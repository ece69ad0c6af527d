package cache

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/internal/testutil"
)

// testKey makes a key from a seed.
func testKey(seed string) string {
	s := sha256.Sum256([]byte(seed))
	return hex.EncodeToString(s[:])
}

// collidingKey is a key with the same key16 as key and another tail.
func collidingKey(key, seed string) string {
	k := key[:16] + testKey(seed)[16:]
	if k == key {
		panic("collidingKey: same key")
	}
	return k
}

func openCache(t testing.TB, dir string) *Cache {
	t.Helper()
	c, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func blobOf(key string) []byte { return []byte("blob of " + key) }

func testInfo(key, name string) Info {
	return Info{
		Key:       key,
		Name:      name,
		Type:      "packages",
		DiffID:    digest.FromString("diff of " + key),
		Digest:    digest.FromBytes(blobOf(key)),
		MediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
	}
}

// fillTemp builds a small deterministic layer into t's rootfs and writes
// its blob.
func fillTemp(tb testing.TB, tmp *Temp, key string) {
	tb.Helper()
	testutil.Tree{T: tb, Root: tmp.Rootfs()}.
		File("etc/layer.conf", "key="+key+"\n").
		File("usr/bin/tool", strings.Repeat("x", 5000)).
		Symlink("usr/bin/alias", "tool").
		Dir("var/empty")
	if err := os.WriteFile(tmp.BlobPath(), blobOf(key), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// build inserts an entry for key and name, the way a builder does:
// lock, look up, build on a miss, insert.
func build(tb testing.TB, c *Cache, key, name string, edit func(rootfs string)) *Entry {
	tb.Helper()
	ctx := context.Background()
	unlock, err := c.Lock(ctx, key)
	if err != nil {
		tb.Fatal(err)
	}
	defer unlock()
	tmp, err := c.NewTemp(name)
	if err != nil {
		tb.Fatal(err)
	}
	fillTemp(tb, tmp, key)
	if edit != nil {
		edit(tmp.Rootfs())
	}
	e, err := c.Insert(ctx, tmp, testInfo(key, name))
	if err != nil {
		tmp.Abort()
		tb.Fatal(err)
	}
	return e
}

// dirNames lists a dir's names ("" when it does not exist).
func dirNames(tb testing.TB, dir string) []string {
	tb.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		tb.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// requireClean fails when temp dirs or lock files are left behind.
func requireClean(tb testing.TB, c *Cache) {
	tb.Helper()
	for _, d := range []string{tmpDir, locksDir} {
		if names := dirNames(tb, filepath.Join(c.Dir(), d)); len(names) > 0 {
			tb.Errorf("%s/ holds %v after the builds", d, names)
		}
	}
}

// The helper process: the test binary re-executed with helperEnv set runs
// one of the commands below, talking to the test over stdin and stdout.
const helperEnv = "LAYERFS_CACHE_TEST_HELPER"

type helperProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startHelper(tb testing.TB, args ...string) *helperProc {
	tb.Helper()
	return startHelperAs(tb, os.Args[0], nil, args...)
}

func startHelperAs(tb testing.TB, bin string, cred *syscall.Credential, args ...string) *helperProc {
	tb.Helper()
	cmd := exec.Command(bin, append([]string{"-test.run=^TestHelperProcess$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		if os.Getenv("GOCOVERDIR") != "" { // go test -cover: give the user somewhere to write
			cov := filepath.Join(filepath.Dir(bin), "cover")
			os.Mkdir(cov, 0o777)
			os.Chmod(cov, 0o777)
			cmd.Env = append(cmd.Env, "GOCOVERDIR="+cov)
		}
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	h := &helperProc{cmd: cmd, in: in, out: bufio.NewReader(out)}
	tb.Cleanup(func() {
		if h.cmd.ProcessState == nil {
			h.cmd.Process.Kill()
			h.cmd.Wait()
		}
	})
	return h
}

// expect reads the helper's next line and fails unless it starts with want;
// it returns the rest of the line.
func (h *helperProc) expect(tb testing.TB, want string) string {
	tb.Helper()
	line, err := h.out.ReadString('\n')
	if err != nil {
		tb.Fatalf("helper %v: reading %q: %v (got %q)", h.cmd.Args[3:], want, err, line)
	}
	line = strings.TrimSuffix(line, "\n")
	rest, ok := strings.CutPrefix(line, want)
	if !ok {
		tb.Fatalf("helper %v: got %q, want %q", h.cmd.Args[3:], line, want)
	}
	return strings.TrimSpace(rest)
}

func (h *helperProc) send(tb testing.TB, line string) {
	tb.Helper()
	if _, err := io.WriteString(h.in, line+"\n"); err != nil {
		tb.Fatal(err)
	}
}

// finish closes the helper's stdin, which ends its wait, and requires a
// clean exit.
func (h *helperProc) finish(tb testing.TB) {
	tb.Helper()
	h.in.Close()
	if err := h.cmd.Wait(); err != nil {
		tb.Fatalf("helper %v: %v", h.cmd.Args[3:], err)
	}
}

// kill ends the helper with SIGKILL and reaps it, so that its locks are
// released and its pid is gone.
func (h *helperProc) kill(tb testing.TB) {
	tb.Helper()
	if err := h.cmd.Process.Kill(); err != nil {
		tb.Fatal(err)
	}
	h.cmd.Wait()
}

func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		return // an entry point for other tests' child processes
	}
	args := os.Args
	for len(args) > 0 && args[0] != "--" {
		args = args[1:]
	}
	if err := runHelper(t, args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runHelper(t *testing.T, args []string) error {
	ctx := context.Background()
	stdin := bufio.NewReader(os.Stdin)
	waitStdin := func() { io.Copy(io.Discard, stdin) }
	block := func() { select {} }
	c, err := Open(args[1])
	if err != nil {
		return err
	}
	switch args[0] {
	case "build": // DIR KEY NAME COUNTER: a builder that looks up under the lock
		key, name, counter := args[2], args[3], args[4]
		fmt.Println("ready")
		stdin.ReadString('\n')
		e, err := lockedBuild(ctx, t, c, key, name, counter)
		if err != nil {
			return err
		}
		fmt.Println("done", e.Dir)
	case "racebuild": // DIR KEY NAME: a builder that builds first, then locks to insert
		key, name := args[2], args[3]
		fmt.Println("ready")
		stdin.ReadString('\n')
		e, err := racingBuild(ctx, t, c, key, name)
		if err != nil {
			return err
		}
		fmt.Println("done", e.Dir)
	case "crash": // DIR KEY NAME POINT: stop at POINT, say so, and wait to be killed
		key, name, point := args[2], args[3], args[4]
		c.hook = func(p string) {
			if p == point {
				fmt.Println("ready")
				block()
			}
		}
		if point == "remove:renamed" {
			build(t, c, key, name, nil)
			c.Remove(key, nil)
			return fmt.Errorf("remove returned")
		}
		unlock, err := c.Lock(ctx, key)
		if err != nil {
			return err
		}
		defer unlock()
		tmp, err := c.NewTemp(name)
		if err != nil {
			return err
		}
		if point == "newtemp" {
			fmt.Println("ready")
			block()
		}
		fillTemp(t, tmp, key)
		if point == "midrootfs" {
			f, err := os.Create(filepath.Join(tmp.Rootfs(), "big"))
			if err != nil {
				return err
			}
			f.Write(make([]byte, 1<<20))
			fmt.Println("ready")
			block()
		}
		_, err = c.Insert(ctx, tmp, testInfo(key, name))
		return fmt.Errorf("insert returned: %v", err)
	case "use": // DIR KEY NAME: hold the entry's Use lock until stdin ends
		e, err := c.Lookup(args[2], args[3])
		if err != nil || e == nil {
			return fmt.Errorf("lookup: %v, %v", e, err)
		}
		release, err := e.Use()
		if err != nil {
			return err
		}
		fmt.Println("ready")
		waitStdin()
		release()
	case "lock": // DIR KEY: hold the key's lock until stdin ends
		unlock, err := c.Lock(ctx, args[2])
		if err != nil {
			return err
		}
		fmt.Println("ready")
		waitStdin()
		unlock()
	case "unpriv": // DIR: the life of an entry with read-only dirs, as an unprivileged user
		return unprivileged(ctx, t, c)
	default:
		return fmt.Errorf("unknown helper command %q", args[0])
	}
	return nil
}

// lockedBuild is the builder's protocol: under the key's lock, look up,
// and only on a miss do the work (counted by a line in counter) and insert.
func lockedBuild(ctx context.Context, tb testing.TB, c *Cache, key, name, counter string) (*Entry, error) {
	unlock, err := c.Lock(ctx, key)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if e, err := c.Lookup(key, name); e != nil || err != nil {
		return e, err
	}
	f, err := os.OpenFile(counter, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "built by %d\n", os.Getpid())
	f.Close()
	tmp, err := c.NewTemp(name)
	if err != nil {
		return nil, err
	}
	fillTemp(tb, tmp, key)
	e, err := c.Insert(ctx, tmp, testInfo(key, name))
	if err != nil {
		tmp.Abort()
	}
	return e, err
}

// racingBuild builds without looking up, then takes the lock only to
// insert: every builder builds, one entry must result.
func racingBuild(ctx context.Context, tb testing.TB, c *Cache, key, name string) (*Entry, error) {
	tmp, err := c.NewTemp(name)
	if err != nil {
		return nil, err
	}
	fillTemp(tb, tmp, key)
	unlock, err := c.Lock(ctx, key)
	if err != nil {
		return nil, err
	}
	defer unlock()
	e, err := c.Insert(ctx, tmp, testInfo(key, name))
	if err != nil {
		tmp.Abort()
	}
	return e, err
}

func unprivileged(ctx context.Context, tb testing.TB, c *Cache) error {
	readOnly := func(rootfs string) error {
		return filepath.WalkDir(rootfs, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if p == rootfs {
				return nil
			}
			if d.IsDir() {
				defer os.Chmod(p, 0o555) // after its children are walked
				return nil
			}
			if d.Type().IsRegular() {
				return os.Chmod(p, 0o444)
			}
			return nil
		})
	}
	if c.trusted {
		return fmt.Errorf("an unprivileged process is taken to see trusted.* xattrs")
	}
	key := testKey("unpriv")
	// A temp with read-only dirs is aborted.
	tmp, err := c.NewTemp("ro")
	if err != nil {
		return err
	}
	fillTemp(tb, tmp, key)
	if err := readOnly(tmp.Rootfs()); err != nil {
		return err
	}
	if err := tmp.Abort(); err != nil {
		return fmt.Errorf("abort: %w", err)
	}
	// An entry with read-only dirs, and a work dir left with mode 0, is
	// inserted and removed.
	if tmp, err = c.NewTemp("ro"); err != nil {
		return err
	}
	fillTemp(tb, tmp, key)
	os.Mkdir(filepath.Join(tmp.Work(), "work"), 0o755)
	os.Chmod(filepath.Join(tmp.Work(), "work"), 0)
	if err := readOnly(tmp.Rootfs()); err != nil {
		return err
	}
	e, err := c.Insert(ctx, tmp, testInfo(key, "ro"))
	if err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	if _, err := c.Remove(key, nil); err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	if _, err := os.Lstat(e.Dir); !os.IsNotExist(err) {
		return fmt.Errorf("%s still there after remove: %v", e.Dir, err)
	}
	if names := dirNames(tb, filepath.Join(c.Dir(), tmpDir)); len(names) > 0 {
		return fmt.Errorf(".tmp/ holds %v", names)
	}
	fmt.Println("ok")
	return nil
}
