package appliers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Podman copies the image with skopeo into a containers-storage of its
// own (overlay driver, graph root and run root under work), mounts it
// with `podman image mount` and returns that mount: the real
// containers/storage overlay driver, as podman, buildah and CRI-O use it.
// The storage.conf is private to work so that the host's storage is
// neither read nor touched.
func Podman(ctx context.Context, layoutDir, tag, work string) (string, func() error, error) {
	graph := filepath.Join(work, "graph")
	tmp := filepath.Join(work, "tmp")
	for _, d := range []string{graph, tmp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return "", nil, fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	// podman 4.3 refuses a run root longer than 50 bytes, so it cannot
	// live under work (a test temp dir is longer than that).
	runroot, err := os.MkdirTemp("/tmp", "lfs-run")
	if err != nil {
		return "", nil, fmt.Errorf("podman run root: %w", err)
	}
	rmRunroot := func() error {
		return errors.Join(UnmountUnder(runroot), os.RemoveAll(runroot))
	}
	conf := filepath.Join(work, "storage.conf")
	confText := fmt.Sprintf("[storage]\ndriver = \"overlay\"\ngraphroot = %q\nrunroot = %q\n", graph, runroot)
	if err := os.WriteFile(conf, []byte(confText), 0o644); err != nil {
		return "", nil, fmt.Errorf("write %s: %w", conf, err)
	}
	env := []string{"CONTAINERS_STORAGE_CONF=" + conf, "TMPDIR=" + tmp}
	name := "localhost/layerfs-test:latest"
	dest := fmt.Sprintf("containers-storage:[overlay@%s+%s]%s", graph, runroot, name)
	if _, err := run(ctx, env, "skopeo", "--insecure-policy", "copy", "--quiet", "oci:"+layoutDir+":"+tag, dest); err != nil {
		return "", nil, errors.Join(err, UnmountUnder(work), rmRunroot())
	}
	podman := []string{"--root", graph, "--runroot", runroot, "--storage-driver", "overlay",
		"--tmpdir", tmp, "--events-backend", "none", "--cgroup-manager", "cgroupfs"}
	out, err := run(ctx, env, "podman", append(podman, "image", "mount", name)...)
	if err != nil {
		return "", nil, errors.Join(err, UnmountUnder(work), rmRunroot())
	}
	mnt := strings.TrimSpace(out)
	if mnt == "" || !strings.HasPrefix(mnt, graph) {
		return "", nil, errors.Join(fmt.Errorf("podman image mount printed %q, want a path under %s", out, graph), UnmountUnder(work), rmRunroot())
	}
	cleanup := func() error {
		_, err := run(context.Background(), env, "podman", append(podman, "image", "unmount", "--all")...)
		// containers/storage may leave its own mounts (the driver's
		// private bind mount of its home); none may outlive work.
		return errors.Join(err, UnmountUnder(work), rmRunroot())
	}
	return mnt, cleanup, nil
}

// UnmountUnder unmounts every mount point at or below dir, deepest first.
func UnmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	var errs []error
	for _, p := range points {
		errs = append(errs, Unmount(p))
	}
	return errors.Join(errs...)
}

// unescapeMountinfo undoes the octal escapes (\040 etc.) of mountinfo.
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
