package oci

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/internal/durable"
)

// output is an oci: layout being written. An existing layout is locked
// before its index is read, so that concurrent writers queue instead of
// losing each other's tags; a new one is built beside its final place and
// renamed into it, so a failure leaves no directory behind.
type output struct {
	ref    Reference
	lay    *Layout
	exists bool
	dir    string // where the layout is written: ref.Path, or its temp sibling
}

func openOutput(ref Reference) (o *output, err error) {
	if ref.Transport != TransportOCI {
		return nil, fmt.Errorf("%s: only oci: layouts are written", ref)
	}
	o = &output{ref: ref, dir: ref.Path}
	if o.exists, err = layoutExists(ref); err != nil {
		return nil, err
	}
	if !o.exists {
		parentDir := filepath.Dir(filepath.Clean(ref.Path))
		if err := os.MkdirAll(parentDir, 0o755); err != nil {
			return nil, err
		}
		removeStaleLayouts(parentDir)
		if o.dir, err = os.MkdirTemp(parentDir, fmt.Sprintf("%s%d-", tmpPrefix, os.Getpid())); err != nil {
			return nil, err
		}
		// MkdirTemp makes it private; a layout is as readable as any dir
		// made here (the umask still applies to what is inside).
		if err := os.Chmod(o.dir, 0o755&^umask()); err != nil {
			o.removeTemp()
			return nil, err
		}
	}
	if o.lay, err = CreateLayout(o.dir); err != nil {
		o.removeTemp()
		return nil, err
	}
	return o, nil
}

func (o *output) removeTemp() {
	if !o.exists {
		os.RemoveAll(o.dir) // after the final rename there is nothing left to remove
	}
}

// close ends the write; with err set, what was written is undone.
func (o *output) close(err error) {
	if err != nil {
		o.lay.Abort()
	}
	o.lay.Close()
	o.removeTemp()
}

// tag points tag at the manifest mdesc, keeping every other tag, and
// makes a new layout appear at its final path.
func (o *output) tag(tag string, mdesc v1.Descriptor) error {
	if mdesc.Annotations == nil {
		mdesc.Annotations = map[string]string{}
	}
	mdesc.Annotations[v1.AnnotationRefName] = tag
	idx, err := o.lay.ReadIndex()
	if err != nil {
		return err
	}
	kept := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		if m.Annotations[v1.AnnotationRefName] != tag {
			kept = append(kept, m)
		}
	}
	idx.Manifests = append(kept, mdesc)
	idx.Versioned = specs.Versioned{SchemaVersion: 2}
	if err := o.lay.WriteIndex(idx); err != nil {
		return err
	}
	if !o.exists {
		if err := os.Rename(o.dir, o.ref.Path); err != nil {
			return fmt.Errorf("create %s: %w", o.ref.Path, err)
		}
		if err := durable.SyncDir(filepath.Dir(filepath.Clean(o.ref.Path))); err != nil {
			return err
		}
	}
	return nil
}

// umask is the process's file mode creation mask, read from
// /proc/self/status: setting it to read it back would race with files
// other goroutines create meanwhile.
func umask() os.FileMode {
	data, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return os.FileMode(m)
				}
			}
		}
	}
	return 0o022
}
