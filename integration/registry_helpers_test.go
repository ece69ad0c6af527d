package integration

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/integration/testenv"
)

// The htpasswd user of registries started with auth. The bcrypt hash of
// regPassword (cost 5) is made once and kept here, as
// `htpasswd -nbB -C 5 layerfs s3cret-pass` would make one: neither
// apache2-utils nor golang.org/x/crypto is a test dependency, and the
// registry only has to check it.
const (
	regUser     = "layerfs"
	regPassword = "s3cret-pass"
	regHtpasswd = regUser + ":$2b$05$aQzVDbsmvXgzsShS2YV8nub3uf6HGAG2eYRYmSd2qaQHaEyMMAeqK\n"
)

// regServer is Debian's docker-registry (the distribution registry)
// serving a temp dir on 127.0.0.1 until the test ends.
type regServer struct {
	// Host is 127.0.0.1:PORT.
	Host string
	// Storage is the filesystem driver's root directory: blobs are in
	// Storage/docker/registry/v2/blobs/sha256/XX/HEX/data.
	Storage string
	log     string
	proc    *os.Process
	stop    func() // once: SIGTERM, then SIGKILL after 5s
}

// startRegistry starts docker-registry on a free port, with htpasswd
// auth (regUser) when auth is set. Its access log, which the upload
// counts read, goes to a file in the test's temp dir.
func startRegistry(t *testing.T, auth bool) *regServer {
	t.Helper()
	testenv.NeedTool(t, "docker-registry")
	dir := t.TempDir()
	var lastErr error
	// A port found free may be taken before the registry binds it: retry.
	for attempt := 0; attempt < 3; attempt++ {
		s, err := tryStartRegistry(t, dir, attempt, auth)
		if err == nil {
			return s
		}
		lastErr = err
	}
	t.Fatalf("docker-registry did not start: %v", lastErr)
	return nil
}

func tryStartRegistry(t *testing.T, dir string, attempt int, auth bool) (*regServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	host := l.Addr().String()
	l.Close()
	storage := filepath.Join(dir, fmt.Sprintf("storage%d", attempt))
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: layerfs-test-secret
`, storage, host)
	if auth {
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(regHtpasswd), 0o600); err != nil {
			return nil, err
		}
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: layerfs-test\n    path: %s\n", htpasswd)
	}
	cfgPath := filepath.Join(dir, fmt.Sprintf("config%d.yml", attempt))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	s := &regServer{Host: host, Storage: storage, log: filepath.Join(dir, fmt.Sprintf("registry%d.log", attempt))}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("docker-registry", "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cmd.Process.Signal(syscall.SIGCONT) // a frozen registry would not act on SIGTERM
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		})
	}
	s.proc, s.stop = cmd.Process, stop
	client := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		select {
		case err := <-exited:
			return nil, fmt.Errorf("exited (%v): %s", err, s.tail())
		default:
		}
		resp, err := client.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				t.Cleanup(stop)
				return s, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	return nil, fmt.Errorf("no answer on %s: %s", host, s.tail())
}

// Stop stops the registry now (it is gone when Stop returns); the
// test's cleanup then has nothing left to do.
func (s *regServer) Stop() { s.stop() }

// Freeze stops the registry's process with SIGSTOP: connections are still
// accepted by the kernel, and nothing answers them. It is thawed
// (SIGCONT) when the test ends, before it is stopped.
func (s *regServer) Freeze(t *testing.T) {
	t.Helper()
	if err := s.proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("freeze the registry: %v", err)
	}
	t.Cleanup(s.Thaw)
}

// Thaw lets a frozen registry run again.
func (s *regServer) Thaw() { s.proc.Signal(syscall.SIGCONT) }

func (s *regServer) tail() string {
	data, _ := os.ReadFile(s.log)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(data)
}

// ref names repo (with its :tag or @digest) on this registry.
func (s *regServer) ref(repo string) string { return "docker://" + s.Host + "/" + repo }

// regUpload is one blob upload request in the access log: the POST that
// starts it, PATCHes of data, the PUT that commits it.
var regUpload = regexp.MustCompile(`"(POST|PATCH|PUT) /v2/[^ "]+/blobs/uploads/[^ "]* HTTP/[0-9.]+" `)

// uploads returns the registry's blob upload requests so far, from its
// own access log: all of them, and the committing PUTs (one per blob
// stored).
func (s *regServer) uploads(t *testing.T) (requests, blobs int) {
	t.Helper()
	data, err := os.ReadFile(s.log)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regUpload.FindAllSubmatch(data, -1) {
		requests++
		if string(m[1]) == "PUT" {
			blobs++
		}
	}
	return requests, blobs
}

// regAuthFile writes an auth.json (docker and containers format) that
// holds user:password for host.
func regAuthFile(t *testing.T, host, user, password string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "auth.json")
	data, err := json.Marshal(map[string]any{"auths": map[string]any{
		host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password))},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// regIsolatedEnv is the environment with every auth file location moved
// into empty temp dirs, so the host's own logins cannot leak in; extra
// variables are appended.
func regIsolatedEnv(t *testing.T, extra ...string) []string {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "DOCKER_AUTH_CONFIG":
			continue
		}
		env = append(env, kv)
	}
	home := t.TempDir()
	env = append(env, "HOME="+home, "XDG_RUNTIME_DIR="+t.TempDir(), "DOCKER_CONFIG="+filepath.Join(home, "docker"))
	return append(env, extra...)
}

// regRun runs layerfs with env (nil: the test's own) and returns its
// exit status and output.
func regRun(t *testing.T, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(layerfsBin, args...)
	cmd.Env = env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var xe *exec.ExitError
	switch {
	case errors.As(err, &xe):
		code = xe.ExitCode()
	case err != nil:
		t.Fatalf("layerfs %s: %v", strings.Join(args, " "), err)
	}
	return code, out.String(), errOut.String()
}

// regCopy runs layerfs copy, which must succeed, and returns the digest
// it prints and its stderr.
func regCopy(t *testing.T, env []string, args ...string) (digest, stderr string) {
	t.Helper()
	code, out, errOut := regRun(t, env, append([]string{"copy"}, args...)...)
	if code != 0 {
		t.Fatalf("layerfs copy %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	return strings.TrimSpace(out), errOut
}

// regBadInput runs layerfs expecting exit status 2 and one line on
// stderr naming each of want.
func regBadInput(t *testing.T, env []string, want []string, args ...string) string {
	t.Helper()
	code, _, errOut := regRun(t, env, args...)
	line := strings.TrimSpace(errOut)
	if code != 2 || strings.Contains(line, "\n") || line == "" {
		t.Errorf("layerfs %s: exit %d, stderr %q; want exit 2 and one line", strings.Join(args, " "), code, errOut)
		return line
	}
	t.Logf("layerfs %s: %s", strings.Join(args, " "), line)
	for _, w := range want {
		if !strings.Contains(line, w) {
			t.Errorf("layerfs %s: %q does not name %q", strings.Join(args, " "), line, w)
		}
	}
	return line
}
