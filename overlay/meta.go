package overlay

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Type is the kind of a filesystem object.
type Type uint8

const (
	TypeReg Type = iota + 1
	TypeDir
	TypeSymlink
	TypeChar
	TypeBlock
	TypeFifo
	TypeSocket
)

func (t Type) String() string {
	switch t {
	case TypeReg:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeChar:
		return "char device"
	case TypeBlock:
		return "block device"
	case TypeFifo:
		return "fifo"
	case TypeSocket:
		return "socket"
	}
	return "unknown"
}

// TypeOf maps the S_IFMT bits of a stat mode to a Type.
func TypeOf(mode uint32) Type {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return TypeReg
	case unix.S_IFDIR:
		return TypeDir
	case unix.S_IFLNK:
		return TypeSymlink
	case unix.S_IFCHR:
		return TypeChar
	case unix.S_IFBLK:
		return TypeBlock
	case unix.S_IFIFO:
		return TypeFifo
	case unix.S_IFSOCK:
		return TypeSocket
	}
	return 0
}

// Meta is what a layer records about one object: everything an OCI layer
// can carry, after ownership overrides have been applied.
type Meta struct {
	Type Type
	// Mode holds the permission bits plus setuid, setgid and sticky (07777).
	Mode     uint32
	UID, GID uint32
	Size     int64 // regular files only
	Mtime    time.Time
	Link     string // symlink target
	Major    uint32 // devices only
	Minor    uint32
	// Xattrs are the object's extended attributes without the markers and
	// bookkeeping of overlay writers (see IsInternalXattr).
	Xattrs map[string]string
	// Nlink, Dev and Ino identify hardlinks inside one layer dir.
	Nlink uint64
	Dev   uint64
	Ino   uint64
	// OnDiskOwner: UID and GID are the owner of a layer dir's object on
	// disk, with no override_stat recorded over them (Stat sets it). An
	// owner from an override, or from a tar header, was chosen; this one
	// may only be whoever wrote the layer dir, which Squash can map.
	OnDiskOwner bool
}

// Squash maps the on-disk owner of a layer dir written without privileges
// to root, as rootless podman's user namespace maps its user: uid o.UID
// becomes 0, and gid o.GID becomes 0, each on its own. Owners that were
// recorded (override_stat) or named by a tar are explicit and stay; so do
// all owners when o is nil.
func (m *Meta) Squash(o *Owner) {
	if o == nil || !m.OnDiskOwner {
		return
	}
	if m.UID == o.UID {
		m.UID = 0
	}
	if m.GID == o.GID {
		m.GID = 0
	}
}

// IsDir reports whether m describes a directory.
func (m *Meta) IsDir() bool { return m != nil && m.Type == TypeDir }

// metaFromStat fills the stat part of a Meta.
func metaFromStat(st *unix.Stat_t) Meta {
	m := Meta{
		Type:  TypeOf(st.Mode),
		Mode:  st.Mode & 07777,
		UID:   st.Uid,
		GID:   st.Gid,
		Mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		Nlink: uint64(st.Nlink),
		Dev:   st.Dev,
		Ino:   st.Ino,
	}
	switch m.Type {
	case TypeReg:
		m.Size = st.Size
	case TypeChar, TypeBlock:
		m.Major, m.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	}
	return m
}

// Override is the ownership, mode and type that a writer without the
// privilege to apply them recorded in an override_stat xattr.
type Override struct {
	UID, GID     uint32
	Mode         uint32 // 07777
	Type         Type   // 0 when the value names none
	Major, Minor uint32
}

// ParseOverride parses "uid:gid:MODE[:type]", the value format of
// user.containers.override_stat (containers/storage, fuse-overlayfs 1.14+).
// MODE is octal; writers disagree on whether it carries S_IFMT bits, so
// only the low 12 bits are taken. type is file, dir, symlink, pipe, socket,
// block-MAJ-MIN or char-MAJ-MIN.
func ParseOverride(v string) (Override, error) {
	var o Override
	parts := strings.Split(v, ":")
	if len(parts) < 3 || len(parts) > 4 {
		return o, fmt.Errorf("override_stat %q: want uid:gid:mode[:type]", v)
	}
	uid, err := strconv.ParseUint(parts[0], 10, 32)
	if err != nil {
		return o, fmt.Errorf("override_stat %q: uid: %w", v, err)
	}
	gid, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return o, fmt.Errorf("override_stat %q: gid: %w", v, err)
	}
	mode, err := strconv.ParseUint(parts[2], 8, 32)
	if err != nil {
		return o, fmt.Errorf("override_stat %q: mode: %w", v, err)
	}
	o.UID, o.GID, o.Mode = uint32(uid), uint32(gid), uint32(mode)&07777
	if len(parts) == 4 {
		t := parts[3]
		switch {
		case t == "file":
			o.Type = TypeReg
		case t == "dir":
			o.Type = TypeDir
		case t == "symlink":
			o.Type = TypeSymlink
		case t == "pipe":
			o.Type = TypeFifo
		case t == "socket":
			o.Type = TypeSocket
		case strings.HasPrefix(t, "block-"), strings.HasPrefix(t, "char-"):
			o.Type = TypeBlock
			if t[0] == 'c' {
				o.Type = TypeChar
			}
			var maj, min uint32
			rest := t[strings.IndexByte(t, '-')+1:]
			if _, err := fmt.Sscanf(rest, "%d-%d", &maj, &min); err != nil {
				return o, fmt.Errorf("override_stat %q: device: %w", v, err)
			}
			o.Major, o.Minor = maj, min
		default:
			return o, fmt.Errorf("override_stat %q: unknown type %q", v, t)
		}
	}
	return o, nil
}

// Format renders o in the containers/storage format, always with a type.
func (o Override) Format() string {
	t := "file"
	switch o.Type {
	case TypeDir:
		t = "dir"
	case TypeSymlink:
		t = "symlink"
	case TypeFifo:
		t = "pipe"
	case TypeSocket:
		t = "socket"
	case TypeBlock:
		t = fmt.Sprintf("block-%d-%d", o.Major, o.Minor)
	case TypeChar:
		t = fmt.Sprintf("char-%d-%d", o.Major, o.Minor)
	}
	return fmt.Sprintf("%d:%d:%04o:%s", o.UID, o.GID, o.Mode, t)
}

// apply lays an override over stat-derived metadata. A device or fifo
// stored as a plain file becomes that type again, with no content.
func (o Override) apply(m *Meta) {
	m.UID, m.GID, m.Mode = o.UID, o.GID, o.Mode
	if o.Type != 0 && o.Type != m.Type {
		if m.Type == TypeReg && o.Type != TypeDir && o.Type != TypeSymlink {
			m.Type = o.Type
			m.Size = 0
			m.Major, m.Minor = o.Major, o.Minor
		}
	}
}
