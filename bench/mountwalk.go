//go:build ignore

// mountwalk is the walker of bench/mount.sh: one process, no fork per file.
//
//	mountwalk stat DIR   lstat every entry below DIR (fstatat on the parent's fd)
//	mountwalk read DIR   the same walk, and read every regular file to its end
//
// It prints "entries N dirs N files N bytes N". The walk is depth-first and
// single-threaded, like find: each directory is opened, read with getdents64
// (no stat from the listing itself), and every name in it is stat'ed
// relative to the directory's fd. Symlinks are never followed.
//
// Build: go build -o mountwalk bench/mountwalk.go
package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

type counts struct {
	entries, dirs, files, bytes int64
}

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "stat" && os.Args[1] != "read") {
		fmt.Fprintln(os.Stderr, "usage: mountwalk stat|read DIR")
		os.Exit(2)
	}
	read := os.Args[1] == "read"
	var c counts
	buf := make([]byte, 1<<20)
	if err := walk(os.Args[2], read, buf, &c); err != nil {
		fmt.Fprintln(os.Stderr, "mountwalk:", err)
		os.Exit(1)
	}
	fmt.Printf("entries %d dirs %d files %d bytes %d\n", c.entries, c.dirs, c.files, c.bytes)
}

func walk(dir string, read bool, buf []byte, c *counts) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	names, err := readNames(fd, dir, buf)
	if err != nil {
		return err
	}
	var subdirs []string
	for _, name := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("stat %s/%s: %w", dir, name, err)
		}
		c.entries++
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			c.dirs++
			subdirs = append(subdirs, name)
		case unix.S_IFREG:
			c.files++
			if read {
				n, err := readFile(fd, dir, name, buf)
				if err != nil {
					return err
				}
				if n != st.Size {
					return fmt.Errorf("%s/%s: read %d bytes, stat says %d", dir, name, n, st.Size)
				}
				c.bytes += n
			} else {
				c.bytes += st.Size
			}
		}
	}
	for _, name := range subdirs {
		if err := walk(dir+"/"+name, read, buf, c); err != nil {
			return err
		}
	}
	return nil
}

// readNames lists a directory with raw getdents64 calls, without "." and "..".
func readNames(fd int, dir string, buf []byte) ([]string, error) {
	var names []string
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, fmt.Errorf("getdents %s: %w", dir, err)
		}
		if n == 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

func readFile(dirfd int, dir, name string, buf []byte) (int64, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s/%s: %w", dir, name, err)
	}
	defer unix.Close(fd)
	var total int64
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return total, fmt.Errorf("read %s/%s: %w", dir, name, err)
		}
		if n == 0 {
			return total, nil
		}
		total += int64(n)
	}
}
