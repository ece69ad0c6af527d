package fs

import (
	"fmt"
	"os"
	"time"

	"github.com/layerfs/layerfs/overlay"
)

// Session is a union mounted for one job of a build (a layer's install or
// copies): installs see it at Mountpoint, this process reaches it at
// Root, and Close ends it and leaves the upper final.
//
// With FUSE the mount is attached at Mountpoint and served by this
// process; it is registered, so that the next build clears it if this one
// is killed. The kernel's overlayfs mount is attached nowhere: this
// process reaches it through a descriptor, each install attaches a clone
// of it in its own mount namespace (Tree), and it goes away with this
// process, however that ends, leaving nothing to clear.
type Session struct {
	Choice     Choice
	Mountpoint string
	root       string
	upper      string
	srv        *Server
	// served is closed once nothing serves the FUSE mount any more.
	served chan struct{}
	kern   *kernelMount
	forget func()
}

// Start mounts opts with the driver choice names (kernel or FUSE; see
// Prober.Choose) for installs at mountpoint, an empty directory.
func Start(mountpoint string, opts Options, choice Choice) (*Session, error) {
	// A build that cannot record its mount still builds: only a killed
	// build's mount would then be left for the user to clear.
	return start(mountpoint, opts, choice, false)
}

// start is Start; mustRecord makes a FUSE mount that cannot be recorded
// an error (a daemon's: `layerfs mounts` and umount find it by its record).
func start(mountpoint string, opts Options, choice Choice, mustRecord bool) (*Session, error) {
	s := &Session{Choice: choice, Mountpoint: mountpoint, upper: opts.Upper}
	if choice.Driver == DriverKernel {
		k, err := mountKernel(opts)
		if err != nil {
			return nil, err
		}
		s.kern, s.root = k, k.Root()
		return s, nil
	}
	srv, err := Mount(mountpoint, opts)
	if err != nil {
		return nil, err
	}
	s.srv, s.root = srv, mountpoint
	s.served = make(chan struct{})
	go func() { srv.Wait(); close(s.served) }()
	lowers := opts.Lowers
	if lowers == nil {
		lowers = []string{} // a record lists no lowers as [], not null
	}
	forget, err := Register(MountInfo{Mountpoint: mountpoint, Lowers: lowers, Upper: opts.Upper, Workdir: opts.Work,
		ReadOnly: opts.Upper == "", Driver: string(DriverFUSE), PID: os.Getpid(), Started: time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		if mustRecord {
			s.unmount()
			<-s.served
			return nil, fmt.Errorf("record the mount: %w", err)
		}
		forget = func() {}
	}
	s.forget = forget
	return s, nil
}

// Root is where this process reaches the merged view.
func (s *Session) Root() string { return s.root }

// Tree returns, for an install run in a mount namespace of its own, a
// detached mount to attach at Mountpoint there; nil when the mount is
// already at Mountpoint (FUSE), for the namespace to keep writable.
func (s *Session) Tree() (*os.File, error) {
	if s.kern == nil {
		return nil, nil
	}
	return s.kern.Tree()
}

// unmount unmounts the FUSE mount: at once if nothing uses it, else
// lazily, and then it is served until its last user lets go (see served).
func (s *Session) unmount() error {
	err := s.srv.Unmount()
	if err != nil {
		err = Unmount(s.Mountpoint, true)
	}
	return err
}

// Close unmounts and returns once nothing serves the union: the upper is
// final then. The kernel's bookkeeping in the upper (origin and impure
// marks), which means nothing outside this mount, is removed, so that the
// upper is what the FUSE driver would have left.
func (s *Session) Close() error {
	if s.kern != nil {
		if err := s.kern.Close(); err != nil {
			return err
		}
		if s.upper == "" {
			return nil
		}
		return overlay.CleanKernelUpper(s.upper)
	}
	err := s.unmount()
	// After a lazy unmount the daemon serves until the last user of the
	// mount lets go: a process the install left behind (outside a pid
	// namespace, only a rootless build has such) could hold it, and write
	// into the upper while it is committed.
	select {
	case <-s.served:
	case <-time.After(time.Minute):
		err = fmt.Errorf("still in use a minute after the job ended")
	}
	s.forget()
	if err != nil {
		return fmt.Errorf("unmount %s: %w", s.Mountpoint, err)
	}
	return nil
}
