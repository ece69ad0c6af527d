// Package hostile is a corpus of hostile layer tars: the attacks of
// research/hostile-matrix.md (h01–h29) and oci.md §4.3–4.4, plus the
// shapes that broke other appliers (duplicates, whiteout and entry for one
// path, hardlinks before their target, bombs, forged union xattrs). Each
// case says what a safe applier must do with it; tests of every package
// that applies layers run the whole corpus.
//
// The harness contract: the tar of a case is built for a victim directory
// outside, an absolute path outside the extraction root, holding a regular
// file named Victim. Relative escapes climb with enough "../" to reach
// outside from any root, so the harness may place the root anywhere; it
// should also watch the root's parent and the directory above both (".wh..."
// deletes the parent of the root), and check afterwards that nothing there
// changed: no write, no chmod, no new link to a victim, no deletion.
package hostile

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/overlay"

	"github.com/layerfs/layerfs/internal/tartest"
)

// Outcome is what a safe applier does with a case.
type Outcome int

const (
	// Reject: the apply fails with an error naming the culprit.
	Reject Outcome = iota + 1
	// Contain: the apply succeeds and nothing outside the root changes.
	Contain
)

func (o Outcome) String() string {
	switch o {
	case Reject:
		return "reject"
	case Contain:
		return "contain"
	}
	return "unknown"
}

// Victim is the name of the file the harness keeps in outside.
const Victim = "victim"

// Case is one hostile layer.
type Case struct {
	// Name is after the attack it models, e.g. "h04_abs_symlink_write".
	Name string
	// CVE names the advisory the case reproduces, where there is one.
	CVE string
	// Doc says in one line what the tar does.
	Doc  string
	Want Outcome
	// Tar returns the uncompressed tar; outside is the absolute path of
	// the victim dir outside the root.
	Tar func(outside string) []byte
	// MaxSize, when set, is the limit (ApplyOptions.MaxSize) to apply the
	// case with: the bomb cases. Without it they would fill the disk.
	MaxSize int64
	// Mention is a text a rejection must contain: the culprit entry's
	// name as the error quotes it, or the reason when no entry is to blame.
	Mention string
	// Check, when set, checks what a contained case left in the root
	// (through package overlay, so that recorded overrides count).
	Check func(root, outside string) error
}

// climb is a relative path from any extraction root to outside: a naive
// applier that cleans "root/" + climb lands in outside.
func climb(outside string) string {
	return strings.Repeat("../", 40) + strings.TrimPrefix(outside, "/")
}

// Cases returns the corpus, in a fixed order.
func Cases() []Case {
	return []Case{
		{
			Name: "h01_dotdot_name", Want: Reject, Mention: "/pwned\"",
			Doc: "a file named ../../…/outside/pwned",
			Tar: func(o string) []byte { return tartest.NewDated().File(climb(o)+"/pwned", "pwned").Bytes() },
		},
		{
			Name: "h02_abs_name", Want: Contain,
			Doc: "a file named by the absolute path of outside/pwned: lands under the root",
			Tar: func(o string) []byte { return tartest.NewDated().File(o+"/pwned", "pwned").Bytes() },
			Check: func(root, o string) error {
				return wantType(filepath.Join(root, o, "pwned"), overlay.TypeReg)
			},
		},
		{
			Name: "h03_rel_symlink_escape_write", Want: Reject, Mention: `"esc/pwned"`,
			Doc: "esc -> ../../…/outside, then a file esc/pwned",
			Tar: func(o string) []byte {
				return tartest.NewDated().Symlink("esc", climb(o)).File("esc/pwned", "pwned").Bytes()
			},
		},
		{
			Name: "h04_abs_symlink_write", CVE: "CVE-2014-9356", Want: Reject, Mention: `"esca/pwned"`,
			Doc: "esca -> /abs/outside, then a file esca/pwned",
			Tar: func(o string) []byte {
				return tartest.NewDated().Symlink("esca", o).File("esca/pwned", "pwned").Bytes()
			},
		},
		{
			Name: "h05_symlink_chain_escape_write", Want: Reject, Mention: "pwned",
			Doc: "up -> .., up2 -> up/.., then a file up2/outside/pwned",
			Tar: func(o string) []byte {
				return tartest.NewDated().Symlink("up", "..").Symlink("up2", "up/..").
					File("up2/"+filepath.Base(o)+"/pwned", "pwned").Bytes()
			},
		},
		{
			Name: "h06_hardlink_dotdot", CVE: "CVE-2014-6407", Want: Reject, Mention: `"hl"`,
			Doc: "a hardlink hl to ../../…/outside/victim",
			Tar: func(o string) []byte { return tartest.NewDated().Link("hl", climb(o)+"/"+Victim).Bytes() },
		},
		{
			Name: "h07_hardlink_abs", CVE: "CVE-2014-6407", Want: Reject, Mention: `"hl"`,
			Doc: "a hardlink hl to /abs/outside/victim",
			Tar: func(o string) []byte { return tartest.NewDated().Link("hl", o+"/"+Victim).Bytes() },
		},
		{
			Name: "h08_hardlink_via_symlinked_parent", Want: Reject, Mention: `"hl"`,
			Doc: "hp -> /abs/outside, then a hardlink hl to hp/victim",
			Tar: func(o string) []byte {
				return tartest.NewDated().Symlink("hp", o).Link("hl", "hp/"+Victim).Bytes()
			},
		},
		{
			Name: "h09_hardlink_to_symlink_chmod", CVE: "CVE-2021-32760", Want: Contain,
			Doc: "sl -> /abs/outside/victim, then a hardlink hl to sl with mode 04777",
			Tar: func(o string) []byte {
				return tartest.NewDated().Symlink("sl", o+"/"+Victim).
					Add(&tar.Header{Name: "hl", Typeflag: tar.TypeLink, Linkname: "sl", Mode: 0o4777}, "").Bytes()
			},
			Check: func(root, o string) error {
				if err := wantType(filepath.Join(root, "hl"), overlay.TypeSymlink); err != nil {
					return err
				}
				return sameFile(filepath.Join(root, "hl"), filepath.Join(root, "sl"))
			},
		},
		{
			Name: "h10_whiteout_through_abs_symlink", CVE: "CVE-2014-9356", Want: Reject, Mention: `"ws/.wh.victim"`,
			Doc: "ws -> /abs/outside, then a whiteout ws/.wh.victim",
			Tar: func(o string) []byte {
				return tartest.NewDated().Symlink("ws", o).File("ws/.wh."+Victim, "").Bytes()
			},
		},
		{
			Name: "h11_whiteout_through_rel_symlink", Want: Reject, Mention: `"wr/.wh.victim"`,
			Doc: "wr -> ../../…/outside, then a whiteout wr/.wh.victim",
			Tar: func(o string) []byte {
				return tartest.NewDated().Symlink("wr", climb(o)).File("wr/.wh."+Victim, "").Bytes()
			},
		},
		{
			Name: "h12_opaque_through_symlink", Want: Reject, Mention: `"os/.wh..wh..opq"`,
			Doc: "os -> ../../…/outside, then an opaque marker os/.wh..wh..opq",
			Tar: func(o string) []byte {
				return tartest.NewDated().Symlink("os", climb(o)).File("os/.wh..wh..opq", "").Bytes()
			},
		},
		{
			Name: "h13_whiteout_dotdot_base", Want: Reject, Mention: `"etc/.wh.."`,
			Doc: "etc/.wh.. would delete etc itself",
			Tar: func(string) []byte {
				return tartest.NewDated().Dir("etc/").File("etc/passwd", "x").File("etc/.wh..", "").Bytes()
			},
		},
		{
			Name: "h14_whiteout_bare_prefix", Want: Reject, Mention: `"etc/.wh."`,
			Doc: "a bare etc/.wh. (image-spec#1314: deletes the parent in some appliers)",
			Tar: func(string) []byte { return tartest.NewDated().Dir("etc/").File("etc/.wh.", "").Bytes() },
		},
		{
			Name: "h15_dir_then_symlink_swap_write", CVE: "CVE-2025-47290", Want: Reject, Mention: `"cv"`,
			Doc: "cv/ and cv/a, then cv -> /abs/outside and cv/pwned: a cached parent resolution writes outside",
			Tar: func(o string) []byte {
				return tartest.NewDated().Dir("cv/").File("cv/a", "a").Symlink("cv", o).File("cv/pwned", "pwned").Bytes()
			},
		},
		{
			Name: "h16_root_symlink", CVE: "CVE-2021-29136", Want: Reject, Mention: `"./"`,
			Doc: "the root entry ./ as a symlink to /abs/outside, then etc/pwned",
			Tar: func(o string) []byte {
				return tartest.NewDated().Symlink("./", o).File("etc/pwned", "pwned").Bytes()
			},
		},
		{
			Name: "h17_root_symlink_dot", CVE: "CVE-2021-29136", Want: Reject, Mention: `layer entry "."`,
			Doc: "the root entry . as a symlink to /abs/outside, then pwned",
			Tar: func(o string) []byte {
				return tartest.NewDated().Symlink(".", o).File("pwned", "pwned").Bytes()
			},
		},
		{
			Name: "h18_device_nodes", Want: Contain,
			Doc: "char dev/mem 1:1 and block dev/sda 8:0: kept as devices (or, unprivileged, recorded as their type)",
			Tar: func(string) []byte {
				return tartest.NewDated().Dir("dev/").
					Add(&tar.Header{Name: "dev/mem", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 1, Mode: 0o640}, "").
					Add(&tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8, Devminor: 0, Mode: 0o660}, "").Bytes()
			},
			Check: func(root, _ string) error {
				if err := wantDevice(filepath.Join(root, "dev/mem"), overlay.TypeChar, 1, 1); err != nil {
					return err
				}
				return wantDevice(filepath.Join(root, "dev/sda"), overlay.TypeBlock, 8, 0)
			},
		},
		{
			Name: "h19_char00_smuggled_whiteout", Want: Reject, Mention: `"etc/a.conf"`,
			Doc: "a char device 0:0 etc/a.conf: the kernel's whiteout, smuggled as content",
			Tar: func(string) []byte {
				return tartest.NewDated().Dir("etc/").
					Add(&tar.Header{Name: "etc/a.conf", Typeflag: tar.TypeChar, Mode: 0o644}, "").Bytes()
			},
		},
		{
			Name: "h20_xattr_trusted_overlay_opaque", Want: Contain,
			Doc: "etc/ carrying SCHILY.xattr.trusted.overlay.opaque=y (and user.overlay.opaque): would hide the lower etc",
			Tar: func(string) []byte {
				return tartest.NewDated().Add(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755, PAXRecords: map[string]string{
					"SCHILY.xattr.trusted.overlay.opaque": "y",
					"SCHILY.xattr.user.overlay.opaque":    "y",
				}}, "").File("etc/hosts", "x").Bytes()
			},
			Check: func(root, _ string) error {
				e, err := overlay.Stat(filepath.Join(root, "etc"))
				if err != nil {
					return err
				}
				if e.Opaque {
					return errors.New("etc is opaque: the tar's overlay xattr was applied")
				}
				return nil
			},
		},
		{
			Name: "h21_hardlink_to_dir", Want: Reject, Mention: `"hl"`,
			Doc: "a hardlink hl to the directory d",
			Tar: func(string) []byte { return tartest.NewDated().Dir("d/").Link("hl", "d").Bytes() },
		},
		{
			Name: "h22_huge_pax_header", CVE: "CVE-2022-2879", Want: Reject, Mention: "header field too long",
			Doc: "a 3 MiB PAX record",
			Tar: func(string) []byte {
				return tartest.NewDated().Raw(rawPAX("comment", strings.Repeat("x", 3<<20))).File("f", "f").Bytes()
			},
		},
		{
			Name: "h23_whiteout_dotdot_in_dir", Want: Reject, Mention: ".wh.",
			Doc: "etc/../../../.wh.outside: a whiteout whose parent climbs out",
			Tar: func(o string) []byte {
				return tartest.NewDated().Dir("etc/").File("etc/../../../.wh."+filepath.Base(o), "").Bytes()
			},
		},
		{
			Name: "h24_setuid_root_file", Want: Contain,
			Doc: "usr/bin/su owned by root, mode 04755: allowed, as every applier does",
			Tar: func(string) []byte {
				return tartest.NewDated().Dir("usr/").Dir("usr/bin/").
					Add(&tar.Header{Name: "usr/bin/su", Typeflag: tar.TypeReg, Mode: 0o4755}, "#!/bin/sh\n").Bytes()
			},
			Check: func(root, _ string) error {
				return wantOwnerMode(filepath.Join(root, "usr/bin/su"), 0, 0o4755)
			},
		},
		{
			Name: "h25_symlink_loop", Want: Reject, Mention: `"loop1/x"`,
			Doc: "loop1 -> loop2, loop2 -> loop1, then a file loop1/x",
			Tar: func(string) []byte {
				return tartest.NewDated().Symlink("loop1", "loop2").Symlink("loop2", "loop1").File("loop1/x", "x").Bytes()
			},
		},
		{
			Name: "h26_dev_out_of_range", Want: Reject, Mention: "out of range",
			Doc: "a char device with major 2^40 (GNU base-256): a cast would truncate it to another device",
			Tar: func(string) []byte {
				return tartest.NewDated().Add(&tar.Header{Name: "dev/x", Typeflag: tar.TypeChar, Devmajor: 1 << 40, Devminor: 1, Mode: 0o600, Format: tar.FormatGNU}, "").Bytes()
			},
		},
		{
			Name: "h27_whiteout_dotdotdot_root", Want: Reject, Mention: `".wh..."`,
			Doc: "a top-level .wh...: deletes the parent of the root in umoci and library go-archive 0.1 (oci.md §4.4)",
			Tar: func(string) []byte { return tartest.NewDated().File("etc", "x").File(".wh...", "").Bytes() },
		},
		{
			Name: "h28_whiteout_dotdotdot_in_dir", Want: Reject, Mention: `"etc/.wh..."`,
			Doc: "etc/.wh...: would delete the layer root",
			Tar: func(string) []byte { return tartest.NewDated().Dir("etc/").File("etc/.wh...", "").Bytes() },
		},
		{
			Name: "h29_whiteout_bare_at_root", Want: Reject, Mention: `".wh."`,
			Doc: "a top-level bare .wh.: would delete the layer root",
			Tar: func(string) []byte { return tartest.NewDated().File("a", "a").File(".wh.", "").Bytes() },
		},
		{
			Name: "wh_dotdot_at_root", Want: Reject, Mention: `".wh.."`,
			Doc: "a top-level .wh..: would delete the layer root",
			Tar: func(string) []byte { return tartest.NewDated().File(".wh..", "").Bytes() },
		},
		{
			Name: "wh_reserved_target", Want: Reject, Mention: `".wh..wh.plnk"`,
			Doc: "a whiteout of .wh.plnk: a name only a marker may have",
			Tar: func(string) []byte { return tartest.NewDated().File(".wh..wh.plnk", "").Bytes() },
		},
		{
			Name: "x1_duplicate_file", Want: Reject, Mention: `"a"`,
			Doc: "the same file twice",
			Tar: func(string) []byte { return tartest.NewDated().File("a", "1").File("a", "2").Bytes() },
		},
		{
			Name: "x1_duplicate_dir", Want: Reject, Mention: `"./d/"`,
			Doc: "the same directory twice, under two spellings",
			Tar: func(string) []byte { return tartest.NewDated().Dir("d/").Dir("./d/").Bytes() },
		},
		{
			Name: "x1_file_then_dir", Want: Reject, Mention: `"a/"`,
			Doc: "a file a, then a directory a/",
			Tar: func(string) []byte { return tartest.NewDated().File("a", "1").Dir("a/").Bytes() },
		},
		{
			Name: "w1_whiteout_then_entry", Want: Reject, Mention: `"foo"`,
			Doc: ".wh.foo, then a file foo: a layer never holds both",
			Tar: func(string) []byte { return tartest.NewDated().File(".wh.foo", "").File("foo", "x").Bytes() },
		},
		{
			Name: "w2_entry_then_whiteout", Want: Reject, Mention: `".wh.foo"`,
			Doc: "a file foo, then .wh.foo",
			Tar: func(string) []byte { return tartest.NewDated().File("foo", "x").File(".wh.foo", "").Bytes() },
		},
		{
			Name: "w3_whiteout_of_written_dir", Want: Reject, Mention: `".wh.etc"`,
			Doc: "etc/ and etc/x, then .wh.etc",
			Tar: func(string) []byte {
				return tartest.NewDated().Dir("etc/").File("etc/x", "x").File(".wh.etc", "").Bytes()
			},
		},
		{
			Name: "w4_entry_under_whiteout", Want: Reject, Mention: `"etc/x"`,
			Doc: ".wh.etc, then etc/x: nothing may live beneath a path the layer deletes",
			Tar: func(string) []byte { return tartest.NewDated().File(".wh.etc", "").File("etc/x", "x").Bytes() },
		},
		{
			Name: "w5_whiteout_dir_children", Want: Reject, Mention: `".wh.x/y"`,
			Doc: "an entry beneath a whiteout name",
			Tar: func(string) []byte { return tartest.NewDated().File(".wh.x/y", "y").Bytes() },
		},
		{
			Name: "m5_entries_under_same_layer_symlink", Want: Contain,
			Doc: "usr/lib/, lib -> usr/lib, then lib/libc.so: written through the link, inside the root",
			Tar: func(string) []byte {
				return tartest.NewDated().Dir("usr/").Dir("usr/lib/").Symlink("lib", "usr/lib").File("lib/libc.so", "elf").Bytes()
			},
			Check: func(root, _ string) error {
				if err := wantType(filepath.Join(root, "lib"), overlay.TypeSymlink); err != nil {
					return err
				}
				return wantType(filepath.Join(root, "usr/lib/libc.so"), overlay.TypeReg)
			},
		},
		{
			Name: "m5_whiteout_under_same_layer_symlink", Want: Contain,
			Doc: "usr/lib/, lib -> usr/lib, then lib/.wh.libz.so: the marker lands in usr/lib",
			Tar: func(string) []byte {
				return tartest.NewDated().Dir("usr/").Dir("usr/lib/").Symlink("lib", "usr/lib").File("lib/.wh.libz.so", "").Bytes()
			},
			Check: func(root, _ string) error {
				ents, _, err := overlay.ReadDir(filepath.Join(root, "usr/lib"))
				if err != nil {
					return err
				}
				if len(ents) != 1 || !ents[0].Whiteout || ents[0].Name != "libz.so" {
					return fmt.Errorf("usr/lib holds %v, want the whiteout of libz.so", ents)
				}
				return nil
			},
		},
		{
			Name: "m5_abs_symlink_parent_dir", Want: Reject, Mention: `"d/sub/"`,
			Doc: "d -> /abs/outside, then a directory d/sub/",
			Tar: func(o string) []byte { return tartest.NewDated().Symlink("d", o).Dir("d/sub/").Bytes() },
		},
		{
			Name: "h2_hardlink_before_target", Want: Reject, Mention: `"a"`,
			Doc: "a hardlink a to b, then the file b",
			Tar: func(string) []byte { return tartest.NewDated().Link("a", "b").File("b", "b").Bytes() },
		},
		{
			Name: "hardlink_to_whiteout", Want: Reject, Mention: `"hl"`,
			Doc: ".wh.x, then a hardlink hl to x",
			Tar: func(string) []byte { return tartest.NewDated().File(".wh.x", "").Link("hl", "x").Bytes() },
		},
		{
			Name: "bomb_past_max_size", CVE: "CVE-2017-14992", Want: Reject, MaxSize: 1 << 20, Mention: "limit of 1048576",
			Doc: "a 4 MiB file applied with a 1 MiB limit (gzipped, see GzipBomb, it is a few KiB)",
			Tar: func(string) []byte {
				return tartest.NewDated().Add(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o644}, string(make([]byte, 4<<20))).Bytes()
			},
		},
		{
			Name: "sparse_bomb", Want: Reject, MaxSize: 1 << 20, Mention: "limit of 1048576",
			Doc: "a GNU sparse 1.0 file of one block claiming 1 TiB of holes",
			Tar: func(string) []byte { return tartest.NewDated().Raw(sparse1x0("bomb", 1<<40, []byte("0\n"))).Bytes() },
		},
		{
			Name: "sparse_map_huge", CVE: "CVE-2025-58183", Want: Reject, Mention: "malformed tar",
			Doc: "a GNU sparse 1.0 map of 10^8 entries, past archive/tar's 1 MiB cap",
			Tar: func(string) []byte {
				m := append([]byte("100000000\n"), bytes.Repeat([]byte("0\n"), 600<<10)...)
				return tartest.NewDated().Raw(sparse1x0("sparse", 1<<20, m)).Bytes()
			},
		},
		{
			Name: "pax_path_dotdot", Want: Reject, Mention: "/pwned\"",
			Doc: "a benign ustar name overridden by a PAX path ../../…/outside/pwned",
			Tar: func(o string) []byte {
				return tartest.NewDated().Raw(rawPAX("path", climb(o)+"/pwned")).
					Raw(append(rawHeader("benign", '0', 5), padded([]byte("pwned"))...)).Bytes()
			},
		},
		{
			Name: "pax_linkpath_dotdot", Want: Reject, Mention: `"hl"`,
			Doc: "a hardlink whose PAX linkpath is ../../…/outside/victim",
			Tar: func(o string) []byte {
				hdr := rawHeader("hl", '1', 0)
				copy(hdr[157:257], "benign")
				checksum(hdr)
				return tartest.NewDated().File("benign", "b").Raw(rawPAX("linkpath", climb(o)+"/"+Victim)).Raw(hdr).Bytes()
			},
		},
		{
			Name: "pax_path_nul", Want: Reject, Mention: "malformed tar",
			Doc: "a PAX path with a NUL, which C appliers would cut short",
			Tar: func(string) []byte {
				return tartest.NewDated().Raw(rawPAX("path", "etc/passwd\x00.txt")).
					Raw(append(rawHeader("benign", '0', 1), padded([]byte("x"))...)).Bytes()
			},
		},
		{
			Name: "name_longer_than_path_max", Want: Reject, Mention: "PATH_MAX",
			Doc: "a 5000-byte name, of components that each fit NAME_MAX",
			Tar: func(string) []byte {
				return tartest.NewDated().File(strings.Repeat(strings.Repeat("n", 99)+"/", 50)+"f", "x").Bytes()
			},
		},
		{
			Name: "component_longer_than_name_max", Want: Reject, Mention: "NAME_MAX",
			Doc: "a 300-byte path component",
			Tar: func(string) []byte { return tartest.NewDated().File("a/"+strings.Repeat("x", 300), "x").Bytes() },
		},
		{
			Name: "deep_nesting", Want: Contain,
			Doc: "a file 1500 directories deep (no recursion, no per-level cost past linear)",
			Tar: func(string) []byte { return tartest.NewDated().File(deepPath(), "deep").Bytes() },
			Check: func(root, _ string) error {
				r, err := os.OpenRoot(root)
				if err != nil {
					return err
				}
				defer r.Close()
				data, err := r.ReadFile(deepPath())
				if err != nil || string(data) != "deep" {
					return fmt.Errorf("the deep file: %q, %v", data, err)
				}
				return nil
			},
		},
		{
			Name: "uid_2_31", CVE: "CVE-2024-40635", Want: Reject, Mention: "out of range",
			Doc: "a file owned by uid 2^31, which int32 readers turn negative",
			Tar: func(string) []byte {
				return tartest.NewDated().Add(&tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1 << 31, Gid: 0}, "x").Bytes()
			},
		},
		{
			Name: "forged_override_stat", Want: Contain,
			Doc: "a uid 1000 file 0755 carrying user.containers.override_stat (and the fuse-overlayfs name) saying 0:0:4755",
			Tar: func(string) []byte {
				return tartest.NewDated().Add(&tar.Header{Name: "tool", Typeflag: tar.TypeReg, Mode: 0o755, Uid: 1000, Gid: 1000, PAXRecords: map[string]string{
					"SCHILY.xattr.user.containers.override_stat":    "0:0:4755:file",
					"SCHILY.xattr.user.fuseoverlayfs.override_stat": "0:0:4755",
				}}, "#!/bin/sh\n").Bytes()
			},
			Check: func(root, _ string) error {
				return wantOwnerMode(filepath.Join(root, "tool"), 1000, 0o755)
			},
		},
		{
			Name: "forged_xwhiteout", Want: Contain,
			Doc: "a file carrying trusted.overlay.whiteout (composefs xwhiteout): would delete a lower file",
			Tar: func(string) []byte {
				return tartest.NewDated().Add(&tar.Header{Name: "passwd", Typeflag: tar.TypeReg, Mode: 0o644, PAXRecords: map[string]string{
					"SCHILY.xattr.trusted.overlay.whiteout": "",
					"SCHILY.xattr.user.overlay.whiteout":    "",
				}}, "").Bytes()
			},
			Check: func(root, _ string) error {
				e, err := overlay.Stat(filepath.Join(root, "passwd"))
				if err != nil {
					return err
				}
				if e.Whiteout {
					return errors.New("passwd became a whiteout")
				}
				return nil
			},
		},
		{
			Name: "security_capability", Want: Contain,
			Doc: "a file with security.capability (v2, cap_net_bind_service): allowed",
			Tar: func(string) []byte { return capFile(capV2()) },
		},
		{
			Name: "security_capability_v3_rootid", Want: Contain,
			Doc: "a file with a v3 security.capability naming rootid 1000",
			Tar: func(string) []byte { return capFile(capV3(1000)) },
		},
		{
			Name: "short_data", Want: Reject, Mention: `"f"`,
			Doc: "a header promising 100 bytes, then 10 and the end of the stream",
			Tar: func(string) []byte {
				return append(tartest.NewDated().Unterminated(), append(rawHeader("f", '0', 100), []byte("0123456789")...)...)
			},
		},
		{
			Name: "size_too_small", Want: Reject, Mention: "malformed tar",
			Doc: "a header promising 5 bytes, followed by 600, whose tail is read as the next header",
			Tar: func(string) []byte {
				return tartest.NewDated().Raw(rawHeader("f", '0', 5)).Raw(padded(bytes.Repeat([]byte("A"), 600))).Bytes()
			},
		},
		{
			Name: "truncated_header", Want: Reject, Mention: "truncated tar",
			Doc: "the stream ends in the middle of a header block",
			Tar: func(string) []byte {
				return append(tartest.NewDated().File("a", "a").Unterminated(), rawHeader("b", '0', 0)[:200]...)
			},
		},
		{
			Name: "unknown_type", Want: Reject, Mention: "unsupported entry",
			Doc: "an entry of type 'Z'",
			Tar: func(string) []byte { return tartest.NewDated().Raw(rawHeader("z", 'Z', 0)).Bytes() },
		},
		{
			Name: "backslash_name", Want: Contain,
			Doc: `a file named a\b: a plain name on Linux`,
			Tar: func(string) []byte { return tartest.NewDated().File(`a\b`, "x").Bytes() },
			Check: func(root, _ string) error {
				return wantType(filepath.Join(root, `a\b`), overlay.TypeReg)
			},
		},
	}
}

// deepPath is 1500 directories deep, within PATH_MAX.
func deepPath() string { return strings.Repeat("d/", 1500) + "f" }

// sparse1x0 is a GNU sparse 1.0 entry: PAX records name it and give its
// real size; its data starts with the map (count, then offset/length pairs).
func sparse1x0(name string, realSize int64, sparseMap []byte) []byte {
	data := padded(sparseMap)
	pax := rawPAX("GNU.sparse.major", "1", "GNU.sparse.minor", "0",
		"GNU.sparse.name", name, "GNU.sparse.realsize", fmt.Sprint(realSize))
	return append(append(pax, rawHeader("GNUSparseFile.0/"+name, '0', int64(len(data)))...), data...)
}

func capFile(capValue []byte) []byte {
	return tartest.NewDated().Add(&tar.Header{Name: "ping", Typeflag: tar.TypeReg, Mode: 0o755, PAXRecords: map[string]string{
		"SCHILY.xattr.security.capability": string(capValue),
	}}, "#!/bin/sh\n").Bytes()
}

const capNetBindService = 10

// capV2 is a VFS_CAP_REVISION_2 value granting cap_net_bind_service
// (permitted, effective).
func capV2() []byte {
	v := make([]byte, 20)
	binary.LittleEndian.PutUint32(v[0:], 0x02000000|1) // revision 2, effective
	binary.LittleEndian.PutUint32(v[4:], 1<<capNetBindService)
	return v
}

// capV3 is capV2 with a namespace root uid (VFS_CAP_REVISION_3).
func capV3(rootid uint32) []byte {
	v := make([]byte, 24)
	binary.LittleEndian.PutUint32(v[0:], 0x03000000|1)
	binary.LittleEndian.PutUint32(v[4:], 1<<capNetBindService)
	binary.LittleEndian.PutUint32(v[20:], rootid)
	return v
}

// GzipBomb returns a gzip stream, about size/1000 bytes, of a tar holding
// one file of size zero bytes: for the decompression limit of an applier
// that reads compressed layers.
func GzipBomb(size int64) []byte {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		panic(err)
	}
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: tartest.Epoch}); err != nil {
		panic(err)
	}
	zeros := make([]byte, 1<<20)
	for n := size; n > 0; {
		k := min(n, int64(len(zeros)))
		if _, err := tw.Write(zeros[:k]); err != nil {
			panic(err)
		}
		n -= k
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}
	if err := zw.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func wantType(p string, t overlay.Type) error {
	e, err := overlay.Stat(p)
	if err != nil {
		return err
	}
	if e.Whiteout || e.Meta.Type != t {
		return fmt.Errorf("%s is a %v, want a %v", p, e.Meta.Type, t)
	}
	return nil
}

func wantDevice(p string, t overlay.Type, major, minor uint32) error {
	e, err := overlay.Stat(p)
	if err != nil {
		return err
	}
	if m := e.Meta; m.Type != t || m.Major != major || m.Minor != minor {
		return fmt.Errorf("%s is a %v %d:%d, want a %v %d:%d", p, m.Type, m.Major, m.Minor, t, major, minor)
	}
	return nil
}

func wantOwnerMode(p string, uid, mode uint32) error {
	e, err := overlay.Stat(p)
	if err != nil {
		return err
	}
	if m := e.Meta; m.UID != uid || m.Mode != mode {
		return fmt.Errorf("%s is owned by %d with mode %04o, want %d and %04o", p, m.UID, m.Mode, uid, mode)
	}
	return nil
}

func sameFile(a, b string) error {
	var sa, sb unix.Stat_t
	if err := unix.Lstat(a, &sa); err != nil {
		return err
	}
	if err := unix.Lstat(b, &sb); err != nil {
		return err
	}
	if sa.Dev != sb.Dev || sa.Ino != sb.Ino {
		return fmt.Errorf("%s and %s are not one file", a, b)
	}
	return nil
}
