package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/internal/inputerr"
)

const (
	registryUserAgent = "layerfs"
	// maxManifestSize bounds what a registry may make us buffer for one
	// manifest or config (readBlob's bound for layouts too).
	maxManifestSize = 64 << 20

	mediaTypeDockerManifestV1       = "application/vnd.docker.distribution.manifest.v1+json"
	mediaTypeDockerManifestV1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"
)

// manifestAccept is what a pull asks for: images and indexes, OCI and
// Docker v2. Not schema 1, which has no config to verify.
const manifestAccept = v1.MediaTypeImageManifest + "," + v1.MediaTypeImageIndex + "," +
	mediaTypeDockerManifest + "," + mediaTypeDockerManifestList

// registryEnv is where a registry client finds its trust and credentials;
// tests point it at temp dirs instead of /etc and $HOME.
type registryEnv struct {
	// certDirs hold per-host dirs (HOST[:PORT]/) of *.crt CAs and
	// *.cert/*.key client pairs, as /etc/containers/certs.d does.
	certDirs []string
	// authFiles are docker/containers auth files, first match wins.
	authFiles []string
}

func defaultRegistryEnv() registryEnv {
	return registryEnv{certDirs: defaultCertDirs(), authFiles: defaultAuthFiles()}
}

// openRegistry reads an image from a registry (docker://).
func openRegistry(ctx context.Context, ref Reference, opts OpenOptions) (*Image, error) {
	return openRegistryWith(ctx, ref, opts, defaultRegistryEnv())
}

// pushRegistry pushes an image to a registry, uploading only the blobs it
// lacks.
func pushRegistry(ctx context.Context, img *Image, dst Reference, opts CopyOptions) (v1.Descriptor, error) {
	return pushRegistryWith(ctx, img, dst, opts, defaultRegistryEnv())
}

// registryRepo parses ref's repository with ggcr's rules (a bare name is
// on Docker Hub, library/ implied).
func registryRepo(ref Reference, insecure bool) (name.Repository, error) {
	var nopts []name.Option
	if insecure {
		nopts = append(nopts, name.Insecure)
	}
	repo, err := name.NewRepository(ref.Repository, nopts...)
	if err != nil {
		return repo, inputerr.New("%s: invalid repository: %v", ref, err)
	}
	return repo, nil
}

// registryClient reads manifests and blobs of one repository. The pull
// side is written against ggcr's authenticated transport rather than its
// puller so that every digest check, and the error it gives, is ours.
type registryClient struct {
	ctx    context.Context
	ref    Reference
	repo   name.Repository
	client *http.Client
	creds  credentials
	// sizes are the blob sizes the manifest promises: a registry that
	// sends more is cut off instead of buffered.
	sizes map[digest.Digest]int64
}

func dialRegistry(ctx context.Context, ref Reference, insecure bool, env registryEnv) (*registryClient, error) {
	repo, err := registryRepo(ref, insecure)
	if err != nil {
		return nil, err
	}
	rt, err := registryTransport(ref, repo.RegistryStr(), insecure, env.certDirs)
	if err != nil {
		return nil, err
	}
	creds, err := findCredentials(env.authFiles, repo)
	if err != nil {
		return nil, inputerr.New("%s: %v", ref, err)
	}
	return dialWith(ctx, ref, repo, rt, creds)
}

// dialWith authenticates to repo's registry for pulls over rt.
func dialWith(ctx context.Context, ref Reference, repo name.Repository, rt http.RoundTripper, creds credentials) (*registryClient, error) {
	// Retry what ggcr's remote package retries: timeouts, rate limits and
	// server errors, briefly.
	rt = transport.NewUserAgent(transport.NewRetry(rt, transport.WithRetryStatusCodes(
		http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout,
	)), registryUserAgent)
	tr, err := transport.NewWithContext(ctx, repo.Registry, creds.auth, rt, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, registryError(ref, repo, creds, err)
	}
	return &registryClient{
		ctx:    ctx,
		ref:    ref,
		repo:   repo,
		client: &http.Client{Transport: tr, CheckRedirect: checkRedirect},
		creds:  creds,
		sizes:  map[digest.Digest]int64{},
	}, nil
}

// checkRedirect lets blobs come from a CDN, as Docker Hub's do, but not
// from a private or link-local address another host points at: a
// registry must not be able to make us fetch from the local network (as
// ggcr's own fetcher refuses).
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("more than 10 redirects")
	}
	from, to := via[0].URL.Hostname(), req.URL.Hostname()
	if ip := net.ParseIP(to); to != from && ip != nil && (ip.IsPrivate() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified()) {
		return fmt.Errorf("redirect from %s to the local address %s refused", from, to)
	}
	return nil
}

func (c *registryClient) url(kind, id string) string {
	u := url.URL{Scheme: c.repo.Scheme(), Host: c.repo.RegistryStr(), Path: "/v2/" + c.repo.RepositoryStr() + "/" + kind + "/" + id}
	return u.String()
}

func (c *registryClient) get(u, accept string) (*http.Response, error) {
	return c.do(c.ctx, http.MethodGet, u, accept)
}

// do sends one request and returns the response of a 200, or the error
// the registry's answer means.
func (c *registryClient) do(ctx context.Context, method, u, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, registryError(c.ref, c.repo, c.creds, err)
	}
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		resp.Body.Close()
		return nil, registryError(c.ref, c.repo, c.creds, err)
	}
	return resp, nil
}

// manifest fetches the manifest id (a tag or a digest). By digest, the
// bytes must hash to it.
func (c *registryClient) manifest(id string) (data []byte, mediaType string, err error) {
	return c.manifestCtx(c.ctx, id)
}

func (c *registryClient) manifestCtx(ctx context.Context, id string) (data []byte, mediaType string, err error) {
	resp, err := c.do(ctx, http.MethodGet, c.url("manifests", id), manifestAccept)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	data, err = io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return nil, "", registryError(c.ref, c.repo, c.creds, err)
	}
	if len(data) > maxManifestSize {
		return nil, "", inputerr.New("%s: manifest %s is larger than %d bytes", c.ref, id, maxManifestSize)
	}
	if want, err := digest.Parse(id); err == nil {
		if got := want.Algorithm().FromBytes(data); got != want {
			return nil, "", inputerr.New("%s: manifest %s: %w (got %s)", c.ref, want, ErrDigestMismatch, got)
		}
	}
	mediaType, _, _ = strings.Cut(resp.Header.Get("Content-Type"), ";")
	return data, strings.TrimSpace(mediaType), nil
}

// Open streams blob d, verifying its size and digest as it goes: the
// reader fails at the end, naming the blob, rather than hand over bytes
// that do not match.
func (c *registryClient) Open(d digest.Digest) (io.ReadCloser, error) {
	if err := d.Validate(); err != nil {
		return nil, inputerr.New("%s: blob %q: %v", c.ref, d, err)
	}
	resp, err := c.get(c.url("blobs", d.String()), "")
	if err != nil {
		return nil, err
	}
	size, ok := c.sizes[d]
	if !ok {
		size = -1
	}
	return newVerifyReader(resp.Body, c.ref, d, size), nil
}

func (*registryClient) File(digest.Digest) string { return "" }

func (c *registryClient) Close() error {
	c.client.CloseIdleConnections()
	return nil
}

// verifyReader checks a blob against its digest (and size, when known)
// while it streams.
type verifyReader struct {
	r    io.ReadCloser
	ref  Reference
	want digest.Digest
	size int64 // -1: unknown
	n    int64
	dg   digest.Digester
	err  error
}

func newVerifyReader(r io.ReadCloser, ref Reference, want digest.Digest, size int64) *verifyReader {
	return &verifyReader{r: r, ref: ref, want: want, size: size, dg: want.Algorithm().Digester()}
}

func (v *verifyReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.n += int64(n)
	v.dg.Hash().Write(p[:n])
	switch {
	case v.size >= 0 && v.n > v.size:
		v.err = inputerr.New("%s: blob %s: longer than the %d bytes its descriptor says: %w", v.ref, v.want, v.size, ErrDigestMismatch)
	case err == io.EOF && v.size >= 0 && v.n != v.size:
		v.err = inputerr.New("%s: blob %s: %d bytes, its descriptor says %d: %w", v.ref, v.want, v.n, v.size, ErrDigestMismatch)
	case err == io.EOF && v.dg.Digest() != v.want:
		v.err = inputerr.New("%s: blob %s: %w (got %s)", v.ref, v.want, ErrDigestMismatch, v.dg.Digest())
	case err != nil && err != io.EOF:
		v.err = fmt.Errorf("%s: blob %s: %w", v.ref, v.want, err)
	default:
		return n, err
	}
	return n, v.err
}

func (v *verifyReader) Close() error { return v.r.Close() }

// openRegistryWith pulls the manifest (through an index to the platform
// asked for) and the config; layers stream later through Image.OpenBlob.
func openRegistryWith(ctx context.Context, ref Reference, opts OpenOptions, env registryEnv) (*Image, error) {
	c, err := dialRegistry(ctx, ref, opts.Insecure, env)
	if err != nil {
		return nil, err
	}
	img, err := pullImage(c, ref, opts)
	if err != nil {
		c.Close()
		return nil, err
	}
	return img, nil
}

func pullImage(c *registryClient, ref Reference, opts OpenOptions) (*Image, error) {
	id := ref.Tag
	if ref.Digest != "" {
		id = ref.Digest.String()
	} else if id == "" {
		id = "latest"
	}
	data, mt, err := c.manifest(id)
	if err != nil {
		return nil, err
	}
	desc := v1.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	if ref.Digest != "" {
		desc.Digest = ref.Digest
	}
	// A tag moves; the digest it names now is what the user should pin.
	pin := Reference{Transport: TransportDocker, Repository: ref.Repository, Digest: desc.Digest}
	if ref.Digest == "" && opts.Strict {
		return nil, inputerr.New("%s: a pull by tag without a digest is refused (--strict); pin it: %s", ref, pin)
	}
	for depth := 0; ; depth++ {
		if desc.MediaType, err = manifestKind(ref, desc.Digest, mt, data); err != nil {
			return nil, err
		}
		if desc.MediaType != v1.MediaTypeImageIndex && desc.MediaType != mediaTypeDockerManifestList {
			break
		}
		var idx v1.Index
		if err := json.Unmarshal(data, &idx); err != nil || depth > 4 {
			return nil, inputerr.New("%s: bad image index %s", ref, desc.Digest)
		}
		if desc, err = pickPlatform(ref, &idx, opts.Platform); err != nil {
			return nil, err
		}
		if err := desc.Digest.Validate(); err != nil {
			return nil, inputerr.New("%s: index entry %q: %v", ref, desc.Digest, err)
		}
		if data, mt, err = c.manifest(desc.Digest.String()); err != nil {
			return nil, err
		}
		if int64(len(data)) != desc.Size {
			return nil, inputerr.New("%s: manifest %s: %d bytes, the index says %d", ref, desc.Digest, len(data), desc.Size)
		}
	}
	img := &Image{Ref: ref, ManifestDesc: desc, RawManifest: data, src: c}
	if err := json.Unmarshal(data, &img.Manifest); err != nil {
		return nil, inputerr.New("%s: manifest %s: %v", ref, desc.Digest, err)
	}
	for _, b := range append([]v1.Descriptor{img.Manifest.Config}, img.Manifest.Layers...) {
		if err := b.Digest.Validate(); err != nil {
			return nil, inputerr.New("%s: manifest %s lists blob %q: %v", ref, desc.Digest, b.Digest, err)
		}
		if b.Size < 0 {
			return nil, inputerr.New("%s: manifest %s lists blob %s with size %d", ref, desc.Digest, b.Digest, b.Size)
		}
		c.sizes[b.Digest] = b.Size
	}
	if img.Manifest.Config.Size > maxManifestSize {
		return nil, inputerr.New("%s: config %s: %d bytes is too large", ref, img.Manifest.Config.Digest, img.Manifest.Config.Size)
	}
	r, err := c.Open(img.Manifest.Config.Digest)
	if err != nil {
		return nil, err
	}
	img.RawConfig, err = io.ReadAll(io.LimitReader(r, maxManifestSize+1))
	r.Close()
	if err != nil {
		return nil, err
	}
	if err := img.readConfig(); err != nil {
		return nil, err
	}
	if ref.Digest == "" && opts.Warn != nil {
		opts.Warn(fmt.Sprintf("%s is pulled by tag, which can move; pin it: %s", ref, pin))
	}
	return img, nil
}

// manifestKind names what a fetched manifest is: by the registry's
// Content-Type, else (some registries send text/plain) by its own fields.
func manifestKind(ref Reference, d digest.Digest, contentType string, data []byte) (string, error) {
	var m struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Manifests     json.RawMessage `json:"manifests"`
		Config        json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return "", inputerr.New("%s: manifest %s is not JSON: %v", ref, d, err)
	}
	for _, mt := range []string{contentType, m.MediaType} {
		switch mt {
		case v1.MediaTypeImageManifest, v1.MediaTypeImageIndex, mediaTypeDockerManifest, mediaTypeDockerManifestList:
			return mt, nil
		case mediaTypeDockerManifestV1, mediaTypeDockerManifestV1Signed:
			return "", inputerr.New("%s: %s is a Docker schema 1 manifest, which is not supported", ref, d)
		}
	}
	switch {
	case m.SchemaVersion == 1:
		return "", inputerr.New("%s: %s is a Docker schema 1 manifest, which is not supported", ref, d)
	case m.Manifests != nil:
		return v1.MediaTypeImageIndex, nil
	case m.Config != nil:
		return v1.MediaTypeImageManifest, nil
	}
	return "", inputerr.New("%s: %s is a %q, not an image", ref, d, cmpOr(contentType, m.MediaType))
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// pushRegistryWith pushes img's own manifest bytes, so the registry holds
// the same manifest digest as the source.
func pushRegistryWith(ctx context.Context, img *Image, dst Reference, opts CopyOptions, env registryEnv) (v1.Descriptor, error) {
	mdesc := v1.Descriptor{
		MediaType: pushMediaType(img),
		Digest:    digest.FromBytes(img.RawManifest),
		Size:      int64(len(img.RawManifest)),
	}
	if img.Config.OS != "" {
		mdesc.Platform = &v1.Platform{OS: img.Config.OS, Architecture: img.Config.Architecture, Variant: img.Config.Variant}
	}
	if dst.Digest != "" && dst.Digest != mdesc.Digest {
		return v1.Descriptor{}, inputerr.New("%s: the image's manifest is %s, not the digest named", dst, mdesc.Digest)
	}
	repo, err := registryRepo(dst, opts.Insecure)
	if err != nil {
		return v1.Descriptor{}, err
	}
	var target name.Reference = repo.Tag(cmpOr(dst.Tag, "latest"))
	if dst.Tag == "" && dst.Digest != "" {
		target = repo.Digest(dst.Digest.String())
	}
	rt, err := registryTransport(dst, repo.RegistryStr(), opts.Insecure, env.certDirs)
	if err != nil {
		return v1.Descriptor{}, err
	}
	creds, err := findCredentials(env.authFiles, repo)
	if err != nil {
		return v1.Descriptor{}, inputerr.New("%s: %v", dst, err)
	}
	var blobs []PushBlob
	for _, d := range append([]v1.Descriptor{img.Manifest.Config}, img.Manifest.Layers...) {
		blobs = append(blobs, PushBlob{Descriptor: d, Open: func() (io.ReadCloser, error) { return img.OpenBlob(d.Digest) }})
	}
	gimg, err := partial.CompressedToImage(rawImage{ref: img.Ref, mediaType: mdesc.MediaType, manifest: img.RawManifest, config: img.RawConfig, blobs: blobs})
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("%s: %w", dst, err)
	}
	ropts := []remote.Option{
		remote.WithContext(ctx), remote.WithAuth(creds.auth),
		remote.WithTransport(rt), remote.WithUserAgent(registryUserAgent),
	}
	// remote.Write checks each blob with a HEAD first and uploads only the
	// missing ones; a tag already naming this manifest is left alone.
	if err := remote.Write(target, gimg, ropts...); err != nil {
		return v1.Descriptor{}, registryError(dst, repo, creds, err)
	}
	got, err := remote.Head(target, ropts...)
	if err != nil {
		return v1.Descriptor{}, registryError(dst, repo, creds, err)
	}
	if got.Digest.String() != mdesc.Digest.String() {
		return v1.Descriptor{}, fmt.Errorf("%s: the registry holds manifest %s after pushing %s", dst, got.Digest, mdesc.Digest)
	}
	return mdesc, nil
}

// pushMediaType is the manifest's media type: the index entry's, else
// the manifest's own field, else OCI (what layerfs writes).
func pushMediaType(img *Image) string {
	switch {
	case img.ManifestDesc.MediaType != "":
		return img.ManifestDesc.MediaType
	case img.Manifest.MediaType != "":
		return img.Manifest.MediaType
	}
	return v1.MediaTypeImageManifest
}

// credentials are what a registry is offered, and where they came from
// (for the error when it refuses them).
type credentials struct {
	auth authn.Authenticator
	// from is the auth file that held them; "" means anonymous.
	from string
	// looked lists the auth files searched.
	looked []string
}
