package overlay

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// kernelBookkeeping are the xattrs the kernel's overlayfs leaves in an
// upper for its own use while mounted: the lower object a copy-up came
// from (a file handle of that filesystem), the marks of directories that
// hold such copies, the upper's uuid, and link counts. They describe
// nothing a layer carries (commit drops them) and tie the layer dir to
// the inodes of the lowers it was made over.
var kernelBookkeeping = []string{
	"trusted.overlay.origin",
	"trusted.overlay.impure",
	"trusted.overlay.uuid",
	"trusted.overlay.nlink",
	"trusted.overlay.upper",
}

// CleanKernelUpper removes the kernel's bookkeeping from an upper its
// overlayfs is done with, so that the layer dir is what layerfs's own
// union would have written for the same changes. Markers (whiteouts,
// opaque directories) stay. The walk goes by directory descriptors: no
// path it builds is longer than one name.
func CleanKernelUpper(upper string) error {
	fd, err := unix.Open(upper, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("clean upper %s: %w", upper, err)
	}
	defer unix.Close(fd)
	if err := cleanXattrs(atRoot(fd, upper)); err != nil {
		return fmt.Errorf("clean upper %s: %w", upper, err)
	}
	if err := cleanDir(fd); err != nil {
		return fmt.Errorf("clean upper %s: %w", upper, err)
	}
	return nil
}

func cleanDir(dfd int) error {
	ents, err := readDirentsFd(dfd)
	if err != nil {
		return err
	}
	d := at{dir: dfd, path: "."}
	for _, e := range ents {
		if e.typ == unix.DT_UNKNOWN {
			var st unix.Stat_t
			if err := unix.Fstatat(dfd, e.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("stat %s: %w", e.name, err)
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				e.typ = unix.DT_DIR
			}
		}
		if e.typ == unix.DT_CHR {
			continue // a whiteout (or a device): copy-up never marks one
		}
		if err := cleanXattrs(d.join(e.name)); err != nil {
			return err
		}
		if e.typ != unix.DT_DIR {
			continue
		}
		cfd, err := unix.Openat(dfd, e.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", e.name, err)
		}
		err = cleanDir(cfd)
		unix.Close(cfd)
		if err != nil {
			return err
		}
	}
	return nil
}

func cleanXattrs(p at) error {
	names, err := readXattrNames(p)
	if err != nil {
		return fmt.Errorf("listxattr: %w", err)
	}
	for _, n := range names {
		for _, k := range kernelBookkeeping {
			if n != k {
				continue
			}
			if err := p.removexattr(n); err != nil && err != unix.ENODATA {
				return fmt.Errorf("removexattr %s: %w", n, err)
			}
		}
	}
	return nil
}
