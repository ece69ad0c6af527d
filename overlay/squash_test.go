package overlay

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
)

// Squash maps only an on-disk owner, uid and gid each on its own; a
// recorded owner is explicit and stays, even when it is the squashed one.
func TestSquashOnDiskOwnerOnly(t *testing.T) {
	testutil.RequireRoot(t)
	tr := tree(t).File("plain", "").Chown("plain", 5, 6).
		File("uidonly", "").Chown("uidonly", 5, 9).
		File("recorded", "").Chown("recorded", 5, 6).Xattr("recorded", XattrOverrideStat, "5:6:0644:file").
		File("recorded-root", "").Chown("recorded-root", 5, 6).Xattr("recorded-root", XattrOverrideStat, "0:0:4755:file").
		File("other", "").Chown("other", 7, 8)
	sq := &Owner{UID: 5, GID: 6}
	for name, want := range map[string][3]uint32{
		"plain":         {0, 0, 0o644},
		"uidonly":       {0, 9, 0o644},
		"recorded":      {5, 6, 0o644},
		"recorded-root": {0, 0, 0o4755},
		"other":         {7, 8, 0o644},
	} {
		e, err := Stat(filepath.Join(tr.Root, name))
		if err != nil {
			t.Fatal(err)
		}
		if recorded := name == "recorded" || name == "recorded-root"; e.Meta.OnDiskOwner == recorded {
			t.Errorf("%s: OnDiskOwner %v with a record %v", name, e.Meta.OnDiskOwner, recorded)
		}
		m := e.Meta
		m.Squash(nil)
		if m.UID != e.Meta.UID || m.GID != e.Meta.GID {
			t.Errorf("%s: a nil squash changed the owner", name)
		}
		m.Squash(sq)
		if got := [3]uint32{m.UID, m.GID, m.Mode}; got != want {
			t.Errorf("%s: squashed %d:%d %o, want %d:%d %o", name, got[0], got[1], got[2], want[0], want[1], want[2])
		}
	}
	// A Meta that did not come from a layer dir (a tar's header) is explicit.
	m := Meta{Type: TypeReg, UID: 5, GID: 6}
	m.Squash(sq)
	if m.UID != 5 || m.GID != 6 {
		t.Errorf("a tar's owner was squashed: %d:%d", m.UID, m.GID)
	}
}

// A rootless union records a chown to its own ids only with RecordChowns:
// without the record, a squashing commit could not tell it from an
// object the daemon merely created. (The daemon's ids are this process's,
// root's here; the union is told it runs rootless.)
func TestRecordChownsToOwnIDs(t *testing.T) {
	testutil.RequireRoot(t)
	for _, record := range []bool{false, true} {
		base := t.TempDir()
		upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")
		os.Mkdir(upper, 0o755)
		os.Mkdir(work, 0o700)
		u, err := NewUnion(UnionOptions{Upper: upper, Work: work, Rootless: true, RecordChowns: record})
		if err != nil {
			t.Fatal(err)
		}
		self := Owner{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
		fd, _, err := u.Create("made", os.O_WRONLY, 0o644, self)
		if err != nil {
			t.Fatal(err)
		}
		os.NewFile(uintptr(fd), "made").Close()
		fd, _, err = u.Create("chowned", os.O_WRONLY, 0o644, self)
		if err != nil {
			t.Fatal(err)
		}
		os.NewFile(uintptr(fd), "chowned").Close()
		if _, err := u.Setattr("chowned", Attr{UID: &self.UID, GID: &self.GID}); err != nil {
			t.Fatal(err)
		}
		if _, err := getXattr(atPath(filepath.Join(upper, "made")), XattrOverrideStat); err == nil {
			t.Errorf("record=%v: a created, unchowned object has an override", record)
		}
		v, err := getXattr(atPath(filepath.Join(upper, "chowned")), XattrOverrideStat)
		if record && v != "0:0:0644:file" {
			t.Errorf("chown to the daemon's own ids: override %q (%v), want 0:0:0644:file", v, err)
		}
		if !record && err == nil {
			t.Errorf("without RecordChowns a chown to the daemon's own ids was recorded: %q", v)
		}
		// What a squashing commit then reads.
		for name, want := range map[string]bool{"made": true, "chowned": !record} {
			e, err := Stat(filepath.Join(upper, name))
			if err != nil {
				t.Fatal(err)
			}
			if e.Meta.OnDiskOwner != want {
				t.Errorf("record=%v: %s OnDiskOwner %v, want %v", record, name, e.Meta.OnDiskOwner, want)
			}
		}
	}
}
