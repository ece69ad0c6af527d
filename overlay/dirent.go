package overlay

import (
	"encoding/binary"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// dirent is one raw directory entry: getdents gives the type and inode
// number without a stat per name.
type dirent struct {
	name string
	typ  uint8 // unix.DT_*
	ino  uint64
}

// readDirents lists the directory a, without "." and "..", sorted by
// name.
func readDirents(a at) ([]dirent, error) {
	fd, err := a.open(unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, a.err("open", err)
	}
	defer unix.Close(fd)
	out, err := readDirentsFd(fd)
	if err != nil {
		return nil, a.err("getdents", err)
	}
	return out, nil
}

// readDirentsFd lists an open directory, without "." and "..", sorted by
// name.
func readDirentsFd(fd int) ([]dirent, error) {
	buf := make([]byte, 32<<10)
	var out []dirent
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			break
		}
		// struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; }
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				break
			}
			name := b[19:reclen]
			if i := slices.Index(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s != "." && s != ".." {
				out = append(out, dirent{name: s, typ: b[18], ino: binary.NativeEndian.Uint64(b[0:8])})
			}
			b = b[reclen:]
		}
	}
	slices.SortFunc(out, func(a, b dirent) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// dtToMode maps a dirent type to S_IFMT bits.
func dtToMode(t uint8) uint32 {
	switch t {
	case unix.DT_REG:
		return unix.S_IFREG
	case unix.DT_DIR:
		return unix.S_IFDIR
	case unix.DT_LNK:
		return unix.S_IFLNK
	case unix.DT_CHR:
		return unix.S_IFCHR
	case unix.DT_BLK:
		return unix.S_IFBLK
	case unix.DT_FIFO:
		return unix.S_IFIFO
	case unix.DT_SOCK:
		return unix.S_IFSOCK
	}
	return 0
}
