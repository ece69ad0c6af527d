package mountinfo

import (
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		line string
		want Mount
	}{
		{`36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue`,
			Mount{Dev: "98:0", Mountpoint: "/mnt/parent", FSType: "ext3", Source: "/dev/root"}},
		{`50 27 0:45 / /var/cache/a\040b\134c rw,nosuid - fuse.layerfs layerfs rw,user_id=0`,
			Mount{Dev: "0:45", Mountpoint: `/var/cache/a b\c`, FSType: "fuse.layerfs", Source: "layerfs"}},
		{`51 27 0:46 / /x rw - fuse`, Mount{Dev: "0:46", Mountpoint: "/x", FSType: "fuse"}},
	} {
		got, ok := Parse(c.line)
		if !ok || got != c.want {
			t.Errorf("%s: got %+v %v, want %+v", c.line, got, ok, c.want)
		}
	}
	for _, bad := range []string{"", "1 2 3:4 / /x rw", "1 2 3:4 / /x rw -"} {
		if m, ok := Parse(bad); ok {
			t.Errorf("%q parsed as %+v", bad, m)
		}
	}
}

// TestRead: the table lists the root mount and /proc, as every Linux
// process's does.
func TestRead(t *testing.T) {
	ms, err := Read()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(ms, func(m Mount) bool { return m.Mountpoint == "/" }) ||
		!slices.ContainsFunc(ms, func(m Mount) bool { return m.Mountpoint == "/proc" && m.FSType == "proc" }) {
		t.Errorf("the table lacks / or /proc: %+v", ms)
	}
}
