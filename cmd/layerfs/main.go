// Command layerfs builds multi-layer OCI images from root filesystems
// without copying them around.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/alecthomas/kong"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/sandbox"
)

// cli is the command tree; one file per verb.
type cli struct {
	Build  buildCmd  `cmd:"" help:"Build a multi-layer image from a spec, through the layer cache."`
	Cache  cacheCmd  `cmd:"" help:"Inspect and tidy the layer cache."`
	Commit commitCmd `cmd:"" help:"Turn an overlay upper dir, or a full rootfs (--rootfs), into one OCI layer on top of an image."`
	Mount  mountCmd  `cmd:"" help:"Mount layer dirs as a union filesystem (FUSE) whose changes land in an upper dir."`
	Umount umountCmd `cmd:"" help:"Unmount a layerfs mount, or clear dead ones (--stale)."`
	Mounts mountsCmd `cmd:"" help:"List the layerfs mounts."`

	Copy    copyCmd    `cmd:"" help:"Copy an image between transports (oci:, oci-archive:, docker-archive:, docker://)."`
	Inspect inspectCmd `cmd:"" help:"Show an image's manifest, platform, config and layers."`
	Ls      lsCmd      `cmd:"" help:"List a path of an image's merged view, read from its layer blobs."`
	Cat     catCmd     `cmd:"" help:"Print a file of an image's merged view."`
	Diff    diffCmd    `cmd:"" help:"List the paths added, removed and changed between two images."`
	Index   indexCmd   `cmd:"" help:"Join per-platform images into one multi-platform index."`
}

// env is what every verb gets to run with.
type env struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
}

func (e *env) warn(msg string) { fmt.Fprintf(e.stderr, "layerfs: warning: %s\n", msg) }

// Exit statuses (DESIGN.md): 1 the work failed, 2 bad input.
const (
	exitFailure  = 1
	exitBadInput = 2
)

func main() {
	// An install sandbox re-executes this binary to set up its namespaces.
	if sandbox.Reexec() {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var c cli
	exitCode := -1
	parser, err := kong.New(&c,
		kong.Name("layerfs"),
		kong.Description("Build multi-layer OCI images from root filesystems without copying them."),
		kong.Writers(stdout, stderr),
		// --help exits 0 through here; kong's own usage exit (80) is not used.
		kong.Exit(func(code int) { exitCode = code }),
	)
	if err != nil {
		fmt.Fprintf(stderr, "layerfs: %v\n", err)
		return exitFailure
	}
	kctx, err := parser.Parse(args)
	if exitCode >= 0 {
		return exitCode
	}
	if err != nil {
		fmt.Fprintf(stderr, "layerfs: %v (see layerfs --help)\n", err)
		return exitBadInput
	}
	e := &env{ctx: ctx, stdout: stdout, stderr: stderr}
	if err := kctx.Run(e); err != nil {
		// The verb alone: kong's "copy <src> <dst>" would read as if the
		// placeholders were the values.
		verb := slices.DeleteFunc(strings.Fields(kctx.Command()), func(w string) bool { return strings.HasPrefix(w, "<") })
		fmt.Fprintf(stderr, "layerfs %s: %v\n", strings.Join(verb, " "), err)
		if inputerr.Is(err) {
			return exitBadInput
		}
		if errors.Is(err, context.Canceled) {
			return 130
		}
		return exitFailure
	}
	return 0
}
