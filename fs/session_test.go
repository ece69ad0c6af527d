package fs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testutil"
)

func fuseSession(t *testing.T) (s *Session, mnt, lower, upper string) {
	t.Helper()
	testutil.RequireRoot(t)
	base := t.TempDir()
	mnt, lower, upper = filepath.Join(base, "mnt"), filepath.Join(base, "lower"), filepath.Join(base, "upper")
	mkdirs(t, mnt, lower, upper)
	t.Cleanup(func() { leaveNoMount(mnt) })
	if err := os.WriteFile(filepath.Join(lower, "a"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Start(mnt, Options{Lowers: []string{lower}, Upper: upper, Work: filepath.Join(base, "work")}, Choice{Driver: DriverFUSE})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return s, mnt, lower, upper
}

// A FUSE session is recorded as this process's mount while it serves;
// after Close the mount and its record are gone and the upper holds what
// was written, while the lower is untouched.
func TestSessionFUSE(t *testing.T) {
	s, mnt, lower, upper := fuseSession(t)
	if s.Root() != mnt {
		t.Errorf("Root() = %s, want the mountpoint %s", s.Root(), mnt)
	}
	if tree, err := s.Tree(); tree != nil || err != nil {
		t.Errorf("Tree() = %v, %v; want nothing for a FUSE mount", tree, err)
	}
	m, ok, err := Find(mnt)
	if err != nil || !ok || !m.Alive || m.PID != os.Getpid() || m.Driver != string(DriverFUSE) || m.Upper != upper {
		t.Fatalf("while serving, Find = %+v, %v, %v; want this process's live FUSE mount", m, ok, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "a"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "b"), []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if m, ok, err := Find(mnt); err != nil || ok {
		t.Errorf("after Close, Find = %+v, %v, %v; want no mount and no record", m, ok, err)
	}
	if strings.Contains(mountTableText(t), " "+mnt+" ") {
		t.Errorf("%s still in the mount table after Close", mnt)
	}
	for f, want := range map[string]string{"a": "changed", "b": "new"} {
		if got := readFile(t, filepath.Join(upper, f)); got != want {
			t.Errorf("upper/%s = %q after Close, want %q", f, got, want)
		}
	}
	if got := readFile(t, filepath.Join(lower, "a")); got != "lower" {
		t.Errorf("lower/a = %q, want it untouched", got)
	}
}

// A session still in use when it is closed is detached, and Close waits
// for its last user: what that user writes meanwhile is in the upper
// when Close returns, and nothing after.
func TestSessionCloseWaitsForLastUser(t *testing.T) {
	s, mnt, _, upper := fuseSession(t)
	f, err := os.OpenFile(filepath.Join(mnt, "late"), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		f.Close()
		t.Fatalf("Close returned (%v) while a file of the mount was open", err)
	case <-time.After(time.Second):
	}
	if _, err := f.WriteString("last words"); err != nil {
		t.Fatalf("write to the detached mount: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return after the last user let go")
	}
	if got := readFile(t, filepath.Join(upper, "late")); got != "last words" {
		t.Errorf("upper/late = %q after Close, want what its last user wrote", got)
	}
	if _, ok, _ := Find(mnt); ok {
		t.Errorf("%s still recorded after Close", mnt)
	}
}
