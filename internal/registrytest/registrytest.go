// Package registrytest serves go-containerregistry's in-memory registry
// over HTTP on 127.0.0.1 for the unit tests of every package that talks to
// a registry, with a log of the requests and a hook to tamper with
// answers. (The integration tests run Debian's docker-registry instead.)
package registrytest

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Registry is one registry for one test, closed when the test ends.
type Registry struct {
	// Server is the HTTP server; Host is its host:port.
	Server *httptest.Server
	Host   string

	release chan struct{}
	mu      sync.Mutex
	reqs    []string
	tamper  func(w http.ResponseWriter, r *http.Request) bool
}

// New starts a registry, over TLS with tlsConf when it is not nil. A
// DELETE of a manifest by digest untags it everywhere, as distribution
// (the reference registry) does; go-containerregistry's own registry drops
// only the digest's entry.
func New(t testing.TB, tlsConf *tls.Config) *Registry {
	t.Helper()
	r := &Registry{release: make(chan struct{})}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.reqs = append(r.reqs, req.Method+" "+req.URL.Path)
		tamper := r.tamper
		r.mu.Unlock()
		if tamper != nil && tamper(w, req) {
			return
		}
		if req.Method == http.MethodDelete && strings.Contains(req.URL.Path, "/manifests/sha256:") {
			untagDigest(reg, req)
		}
		reg.ServeHTTP(w, req)
	}))
	r.Server.Config.ErrorLog = log.New(io.Discard, "", 0)
	if tlsConf != nil {
		r.Server.TLS = tlsConf
		r.Server.StartTLS()
	} else {
		r.Server.Start()
	}
	t.Cleanup(r.Server.Close)
	// Registered after Close, so run before it: Close waits for handlers.
	t.Cleanup(func() { close(r.release) })
	r.Host = r.Server.Listener.Addr().String()
	return r
}

// untagDigest deletes every tag that names the manifest req deletes.
func untagDigest(reg http.Handler, req *http.Request) {
	base, d, _ := strings.Cut(req.URL.Path, "/manifests/")
	serve := func(method, path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		reg.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		return rec
	}
	rec := serve(http.MethodGet, base+"/tags/list")
	var list struct{ Tags []string }
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &list) != nil {
		return
	}
	for _, tag := range list.Tags {
		h := serve(http.MethodHead, base+"/manifests/"+tag)
		if h.Header().Get("Docker-Content-Digest") == d {
			serve(http.MethodDelete, base+"/manifests/"+tag)
		}
	}
}

// SetTamper makes f see every request first; it answers one itself by
// returning true. nil removes it.
func (r *Registry) SetTamper(f func(w http.ResponseWriter, req *http.Request) bool) {
	r.mu.Lock()
	r.tamper = f
	r.mu.Unlock()
}

// Requests returns the requests ("METHOD /path") made since the last call.
func (r *Registry) Requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	reqs := r.reqs
	r.reqs = nil
	return reqs
}

// Uploads counts the blob upload requests (POST, PATCH, PUT) among reqs.
func Uploads(reqs []string) int {
	n := 0
	for _, r := range reqs {
		if strings.Contains(r, "/blobs/uploads/") && !strings.HasPrefix(r, "GET") && !strings.HasPrefix(r, "HEAD") {
			n++
		}
	}
	return n
}

// Released is closed when the test ends, before the server closes: a
// handler that stalls waits on it.
func (r *Registry) Released() <-chan struct{} { return r.release }

// Ref is the docker:// reference of repo (with its tag or digest).
func (r *Registry) Ref(repo string) string { return "docker://" + r.Host + "/" + repo }
