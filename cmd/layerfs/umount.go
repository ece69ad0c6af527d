package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/inputerr"
)

type umountCmd struct {
	Stale      bool   `help:"Clear every dead layerfs mount (daemons killed) instead of one mountpoint."`
	Lazy       bool   `help:"Detach the mount even while it is busy."`
	Mountpoint string `arg:"" optional:"" help:"The layerfs mount to unmount."`
}

func (c *umountCmd) Run(e *env) error {
	if c.Stale {
		if c.Mountpoint != "" {
			return inputerr.New("give either --stale or a mountpoint")
		}
		cleared, err := fs.ClearStale()
		for _, mp := range cleared {
			fmt.Fprintf(e.stdout, "cleared %s\n", mp)
		}
		return err
	}
	if c.Mountpoint == "" {
		return inputerr.New("name the mountpoint to unmount, or give --stale")
	}
	mp, err := filepath.Abs(c.Mountpoint)
	if err != nil {
		return inputerr.Wrap(err)
	}
	m, ok, err := fs.Find(mp)
	if err != nil {
		return err
	}
	if !ok || !m.Mounted {
		if ok {
			fs.Forget(mp) // a record left by a daemon that is gone
		}
		return inputerr.New("%s: not a layerfs mount", c.Mountpoint)
	}
	// A dead daemon's mount cannot be busy in a useful way: detach it.
	if err := fs.Unmount(mp, c.Lazy || !m.Alive); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("%s is busy (a process uses it); stop it, or use --lazy", c.Mountpoint)
		}
		return err
	}
	if m.PID > 0 {
		if err := fs.WaitGone(m.PID, 10*time.Second); err != nil {
			return err
		}
	}
	fs.Forget(mp)
	return nil
}
