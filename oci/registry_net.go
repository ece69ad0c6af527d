package oci

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// defaultCertDirs are where podman (containers-certs.d(5)) and docker
// look for a registry's CAs and client certificates, podman's per-user
// dir first.
func defaultCertDirs() []string {
	dirs := []string{"/etc/containers/certs.d", "/etc/docker/certs.d"}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append([]string{filepath.Join(home, ".config/containers/certs.d")}, dirs...)
	}
	return dirs
}

// registryTLSConfig trusts the system CAs plus every DIR/HOST/*.crt, and
// offers every DIR/HOST/NAME.cert with its NAME.key as a client
// certificate. All dirs count (podman stops at the first that exists;
// a CA trusted by either tool is trusted here). A .cert without its .key,
// or the reverse, is an error, as it is for docker and podman.
func registryTLSConfig(host string, dirs []string) (*tls.Config, error) {
	if host == "" || host == "." || host == ".." || strings.ContainsAny(host, `/\`) {
		return nil, fmt.Errorf("registry host %q cannot name a certs.d dir", host)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	conf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	for _, base := range dirs {
		dir := filepath.Join(base, host)
		entries, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("certs dir %s: %w", dir, err)
		}
		for _, e := range entries {
			p := filepath.Join(dir, e.Name())
			switch filepath.Ext(e.Name()) {
			case ".crt":
				data, err := os.ReadFile(p)
				if err != nil {
					return nil, fmt.Errorf("CA certificate %s: %w", p, err)
				}
				if !pool.AppendCertsFromPEM(data) {
					return nil, fmt.Errorf("CA certificate %s: no PEM certificate in it", p)
				}
			case ".cert":
				key := strings.TrimSuffix(p, ".cert") + ".key"
				pair, err := tls.LoadX509KeyPair(p, key)
				if err != nil {
					return nil, fmt.Errorf("client certificate %s with key %s: %w", p, key, err)
				}
				conf.Certificates = append(conf.Certificates, pair)
			case ".key":
				cert := strings.TrimSuffix(p, ".key") + ".cert"
				if _, err := os.Stat(cert); err != nil {
					return nil, fmt.Errorf("client key %s has no certificate %s", p, cert)
				}
			}
		}
	}
	return conf, nil
}

// registryTransport is the HTTP transport for one registry host. Without
// insecure it speaks only verified HTTPS: ggcr itself falls back to plain
// HTTP for loopback and private addresses, which --insecure must gate.
func registryTransport(ref Reference, host string, insecure bool, certDirs []string) (http.RoundTripper, error) {
	conf, err := registryTLSConfig(host, certDirs)
	if err != nil {
		return nil, inputerr.New("%s: %v", ref, err)
	}
	conf.InsecureSkipVerify = insecure
	t := remote.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = conf
	if insecure {
		return t, nil
	}
	return httpsOnly{t}, nil
}

type httpsOnly struct{ inner http.RoundTripper }

func (t httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, &plainHTTPError{req.URL.Host}
	}
	return t.inner.RoundTrip(req)
}

type plainHTTPError struct{ host string }

func (e *plainHTTPError) Error() string {
	return "plain HTTP to " + e.host + " is refused without --insecure"
}

// defaultAuthFiles lists the auth files a registry's credentials are
// looked up in.
func defaultAuthFiles() []string {
	home, _ := os.UserHomeDir()
	return authFilesFrom(os.Getenv, home, os.Getuid())
}

// authFilesFrom orders the auth files as podman reads them
// (containers-auth.json(5)): REGISTRY_AUTH_FILE, or else the runtime
// auth.json that podman login writes; then $XDG_CONFIG_HOME's; then
// docker's config.json ($DOCKER_CONFIG, else ~/.docker). Unlike ggcr's
// DefaultKeychain, which reads only the first file that exists, every
// file is searched in turn for the registry, so a docker config without
// it does not hide podman's login.
func authFilesFrom(getenv func(string) string, home string, uid int) []string {
	var files []string
	switch {
	case getenv("REGISTRY_AUTH_FILE") != "":
		files = append(files, getenv("REGISTRY_AUTH_FILE"))
	case getenv("XDG_RUNTIME_DIR") != "":
		files = append(files, filepath.Join(getenv("XDG_RUNTIME_DIR"), "containers/auth.json"))
	default:
		files = append(files, fmt.Sprintf("/run/containers/%d/auth.json", uid))
	}
	if d := getenv("XDG_CONFIG_HOME"); d != "" {
		files = append(files, filepath.Join(d, "containers/auth.json"))
	} else if home != "" {
		files = append(files, filepath.Join(home, ".config/containers/auth.json"))
	}
	if d := getenv("DOCKER_CONFIG"); d != "" {
		files = append(files, filepath.Join(d, "config.json"))
	} else if home != "" {
		files = append(files, filepath.Join(home, ".docker/config.json"))
	}
	return files
}

// findCredentials returns the first credentials for repo's registry in
// files, or anonymous ones. A file that exists but cannot be read or
// parsed is an error naming it: silently pulling anonymously would hide
// a typo.
func findCredentials(files []string, repo name.Repository) (credentials, error) {
	creds := credentials{auth: authn.Anonymous}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return creds, fmt.Errorf("auth file %s: %w", f, err)
		}
		creds.looked = append(creds.looked, f)
		cf, err := dockerconfig.LoadFromReader(bytes.NewReader(data))
		if err != nil {
			return creds, fmt.Errorf("auth file %s: %w", f, err)
		}
		ac, ok, err := lookupAuth(cf, repo)
		if err != nil {
			return creds, fmt.Errorf("auth file %s: %w", f, err)
		}
		if ok {
			creds.auth = authn.FromConfig(authn.AuthConfig{
				Username: ac.Username, Password: ac.Password,
				IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken,
			})
			creds.from = f
			return creds, nil
		}
	}
	return creds, nil
}

// lookupAuth finds repo's entry in one auth file: the most specific
// namespace key first (containers-auth.json(5) allows
// "host/namespace/repo"), then the host, then docker's own lookup, which
// also asks credential helpers (credHelpers, credsStore) and matches
// URL-style keys such as "https://host/v1/".
func lookupAuth(cf *configfile.ConfigFile, repo name.Repository) (types.AuthConfig, bool, error) {
	hosts := []string{repo.RegistryStr()}
	if repo.RegistryStr() == name.DefaultRegistry {
		hosts = append(hosts, "docker.io", "registry-1.docker.io")
	}
	for _, host := range hosts {
		for p := host + "/" + repo.RepositoryStr(); ; {
			if ac, ok := cf.AuthConfigs[p]; ok && !emptyAuth(ac) {
				return ac, true, nil
			}
			i := strings.LastIndexByte(p, '/')
			if i < 0 {
				break
			}
			p = p[:i]
		}
	}
	ac, err := cf.GetAuthConfig(repo.RegistryStr())
	if err != nil {
		return ac, false, err
	}
	return ac, !emptyAuth(ac), nil
}

func emptyAuth(ac types.AuthConfig) bool {
	return ac.Username == "" && ac.Password == "" && ac.IdentityToken == "" && ac.RegistryToken == ""
}

// registryError turns what a registry operation failed with into one line
// naming ref. Bad input (exit 2): the registry cannot be reached or not
// trusted, refuses the credentials, lacks the repository, tag or blob, or
// rejects the request. A server error or a connection lost midway is the
// work failing (exit 1): a retry may succeed.
func registryError(ref Reference, repo name.Repository, creds credentials, err error) error {
	host := repo.RegistryStr()
	if inputerr.Is(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		if strings.Contains(err.Error(), ref.String()) {
			return err
		}
		return fmt.Errorf("%s: %w", ref, err)
	}
	var (
		terr     *transport.Error
		dnsErr   *net.DNSError
		opErr    *net.OpError
		verifErr *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalid  x509.CertificateInvalidError
		alert    tls.AlertError
	)
	switch {
	case errors.As(err, &terr):
		return statusError(ref, host, creds, terr)
	case errors.As(err, &dnsErr):
		return inputerr.New("%s: registry %s is unreachable: %v", ref, host, dnsErr)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		if errors.As(err, &opErr) {
			return inputerr.New("%s: registry %s is unreachable: %v", ref, host, opErr)
		}
		return inputerr.New("%s: registry %s is unreachable: %s", ref, host, oneLine(err.Error()))
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return inputerr.New("%s: registry %s speaks plain HTTP; --insecure allows it", ref, host)
	case errors.As(err, &verifErr), errors.As(err, &unknown), errors.As(err, &hostErr), errors.As(err, &invalid):
		return inputerr.New("%s: registry %s: TLS certificate not trusted (%s); put its CA in /etc/containers/certs.d/%s/ca.crt, or use --insecure",
			ref, host, oneLine(tlsCause(err)), host)
	case errors.As(err, &alert), errors.As(err, &opErr) && opErr.Op == "remote error":
		// The server's TLS alert, typically for a missing client certificate.
		return inputerr.New("%s: registry %s refused the TLS handshake (%s); a client certificate belongs in /etc/containers/certs.d/%s/ as NAME.cert and NAME.key",
			ref, host, oneLine(remoteAlert(err)), host)
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return inputerr.New("%s: registry %s is unreachable: %v", ref, host, opErr)
	}
	return fmt.Errorf("%s: registry %s: %s", ref, host, oneLine(err.Error()))
}

func remoteAlert(err error) string {
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return opErr.Err.Error()
	}
	return err.Error()
}

func tlsCause(err error) string {
	var verifErr *tls.CertificateVerificationError
	if errors.As(err, &verifErr) {
		return verifErr.Err.Error()
	}
	return err.Error()
}

func statusError(ref Reference, host string, creds credentials, e *transport.Error) error {
	what := fmt.Sprintf("HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	var codes []string
	for _, d := range e.Errors {
		// Code and message only: the detail is a Go map dump.
		diag := string(d.Code)
		if d.Message != "" {
			diag += ": " + d.Message
		}
		codes = append(codes, diag)
		if d.Code == transport.NameUnknownErrorCode && e.StatusCode == http.StatusNotFound {
			return inputerr.Wrap(notFound{fmt.Errorf("%s: registry %s has no such repository (%s)", ref, host, oneLine(diag))})
		}
	}
	if len(codes) > 0 {
		what = oneLine(strings.Join(codes, "; "))
	}
	switch code := e.StatusCode; {
	case code == http.StatusUnauthorized && creds.from == "":
		looked := "no auth file exists"
		if len(creds.looked) > 0 {
			looked = "none in " + strings.Join(creds.looked, ", ")
		}
		return inputerr.New("%s: registry %s requires credentials (%s; searched REGISTRY_AUTH_FILE or $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json, ~/.docker/config.json)", ref, host, looked)
	case code == http.StatusUnauthorized:
		return inputerr.New("%s: registry %s refused the credentials from %s (%s)", ref, host, creds.from, what)
	case code == http.StatusForbidden:
		from := "anonymously"
		if creds.from != "" {
			from = "with the credentials from " + creds.from
		}
		return inputerr.New("%s: registry %s denied access %s (%s)", ref, host, from, what)
	case code == http.StatusNotFound:
		return inputerr.Wrap(notFound{fmt.Errorf("%s: not found in registry %s (%s)", ref, host, what)})
	case code == http.StatusRequestTimeout, code == http.StatusTooManyRequests, code >= 500:
		return fmt.Errorf("%s: registry %s failed (%s)", ref, host, what)
	}
	return inputerr.New("%s: registry %s refused the request (%s)", ref, host, what)
}

// ErrNotFound is what a registry's "no such repository, tag or
// manifest" is (errors.Is): a commit to a new registry image starts it.
var ErrNotFound = errors.New("not found in the registry")

type notFound struct{ error }

func (e notFound) Unwrap() error      { return e.error }
func (notFound) Is(target error) bool { return target == ErrNotFound }

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
