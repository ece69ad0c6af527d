// Package durable makes file-system changes survive a crash.
package durable

import "os"

// SyncDir makes a create, rename or unlink in dir durable: the entry
// lives in the directory, whose own fsync writes it.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
