package layers

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/durable"
)

// Finish makes what the class makes beside the layout: with tar output,
// NAME.tar (the layout's content at the top, members "./...", which
// podman loads as an oci-archive) and NAME-dir.tar (the layout dir
// itself, for skopeo's dir form); and the links
// ${IMAGE_BASENAME}-${tag}-oci[.tar|-dir.tar] to them, with ':' in the
// tag made '_'. Each file appears whole, by rename. Members are dated
// by epoch when set, else by the files.
func (d *Deploy) Finish(ctx context.Context, epoch *time.Time) error {
	layout := d.Layout()
	if d.Tars {
		if err := tarTree(ctx, layout+".tar", layout, ".", epoch); err != nil {
			return err
		}
		if err := tarTree(ctx, layout+"-dir.tar", layout, d.Name, epoch); err != nil {
			return err
		}
	}
	if d.Basename == "" {
		return nil
	}
	link := d.Basename + "-" + strings.ReplaceAll(d.Tag, ":", "_") + "-oci"
	links := map[string]string{link: d.Name}
	if d.Tars {
		links[link+".tar"] = d.Name + ".tar"
		links[link+"-dir.tar"] = d.Name + "-dir.tar"
	}
	for name, target := range links {
		if name == target {
			continue
		}
		p := filepath.Join(d.Dir, name)
		tmp := p + ".layerfs-tmp"
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			return fmt.Errorf("link %s: %w", p, err)
		}
		if err := os.Rename(tmp, p); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("link %s: %w", p, err)
		}
	}
	return durable.SyncDir(d.Dir)
}

// tarTree writes the tree at dir as the tar dst, its members named below
// top ("." gives "./x", as `tar -C dir -cf dst .` does), sorted.
func tarTree(ctx context.Context, dst, dir, top string, epoch *time.Time) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	tw := tar.NewWriter(tmp)
	// WalkDir visits in lexical order: the archive does not depend on
	// the directory's order on disk.
	err = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		name := top
		if rel != "." {
			name = top + "/" + filepath.ToSlash(rel)
		}
		fi, err := de.Info()
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: name, Mode: int64(fi.Mode().Perm()), ModTime: fi.ModTime().Truncate(time.Second), Format: tar.FormatPAX}
		if epoch != nil {
			hdr.ModTime = *epoch
		}
		switch {
		case de.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
		case fi.Mode().IsRegular():
			hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
		default:
			return fmt.Errorf("%s: not a file or directory", p)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tar %s: %w", dst, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("tar %s: %w", dst, err)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	return nil
}
