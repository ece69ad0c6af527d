package layer

import (
	"archive/tar"
	"strings"

	"github.com/layerfs/layerfs/overlay"
)

// XattrRecord prefixes the PAX records that carry xattrs.
const XattrRecord = "SCHILY.xattr."

// Typeflag is the tar entry type that carries an object of type t, 0 for
// a type no layer holds (a socket). With TypeOf it is the one mapping
// between the two that the writer, the applier and the views share.
func Typeflag(t overlay.Type) byte {
	switch t {
	case overlay.TypeReg:
		return tar.TypeReg
	case overlay.TypeDir:
		return tar.TypeDir
	case overlay.TypeSymlink:
		return tar.TypeSymlink
	case overlay.TypeChar:
		return tar.TypeChar
	case overlay.TypeBlock:
		return tar.TypeBlock
	case overlay.TypeFifo:
		return tar.TypeFifo
	}
	return 0
}

// TypeOf is the type of the object a tar entry of type flag makes, 0 for
// an entry that makes none of its own (a hardlink, a GNU volume header).
func TypeOf(flag byte) overlay.Type {
	switch flag {
	case tar.TypeReg, tar.TypeRegA:
		return overlay.TypeReg
	case tar.TypeDir:
		return overlay.TypeDir
	case tar.TypeSymlink:
		return overlay.TypeSymlink
	case tar.TypeChar:
		return overlay.TypeChar
	case tar.TypeBlock:
		return overlay.TypeBlock
	case tar.TypeFifo:
		return overlay.TypeFifo
	}
	return 0
}

// Meta is the object a tar entry describes: its type, mode, owner, mtime,
// size or link target, device numbers, and every xattr its PAX records
// carry (which of them count is the reader's rule).
func Meta(hdr *tar.Header) overlay.Meta {
	m := overlay.Meta{
		Type:  TypeOf(hdr.Typeflag),
		Mode:  uint32(hdr.Mode) & 07777,
		UID:   uint32(hdr.Uid),
		GID:   uint32(hdr.Gid),
		Mtime: hdr.ModTime,
	}
	switch m.Type {
	case overlay.TypeReg:
		m.Size = hdr.Size
	case overlay.TypeSymlink:
		m.Link = hdr.Linkname
	case overlay.TypeChar, overlay.TypeBlock:
		m.Major, m.Minor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
	}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, XattrRecord); ok {
			if m.Xattrs == nil {
				m.Xattrs = map[string]string{}
			}
			m.Xattrs[name] = v
		}
	}
	return m
}
