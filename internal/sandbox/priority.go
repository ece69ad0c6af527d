package sandbox

import (
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// The scheduling priority is the process's: while a yielding command
// (Command.YieldCPU) runs, every thread of this process runs at the
// lowest priority, and at normal priority again once none runs. It is a
// property of the whole process, hence of the package, not of a value.
var yielding struct {
	sync.Mutex
	n int
}

// backgroundNice is the nice value of a yielding process: what it does
// meanwhile takes only the CPU the command leaves.
const backgroundNice = 19

// yieldCPU lowers this process's priority until the returned func is
// called (by every caller, when several yield at once).
func yieldCPU() (restore func()) {
	yielding.Lock()
	yielding.n++
	if yielding.n == 1 {
		setNice(backgroundNice)
	}
	yielding.Unlock()
	return func() {
		yielding.Lock()
		yielding.n--
		if yielding.n == 0 {
			setNice(0)
		}
		yielding.Unlock()
	}
}

// setNice sets the nice value of every thread of this process (Linux
// keeps one per thread; a new thread takes its creator's).
func setNice(n int) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return
	}
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			unix.Setpriority(unix.PRIO_PROCESS, tid, n)
		}
	}
}
