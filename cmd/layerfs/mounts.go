package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/layerfs/layerfs/fs"
)

type mountsCmd struct {
	JSON bool `name:"json" help:"Print the mounts as a JSON array."`
}

func (c *mountsCmd) Run(e *env) error {
	all, err := fs.List()
	if err != nil {
		return err
	}
	if c.JSON {
		if all == nil {
			all = []fs.MountInfo{}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MOUNTPOINT\tSTATE\tPID\tUPPER\tLOWERS")
	for _, m := range all {
		state := "serving"
		if m.IsKernel() {
			state = "mounted (kernel)"
		}
		switch {
		case !m.Mounted:
			state = "gone"
		case !m.Alive:
			state = "dead"
		case m.ReadOnly && m.IsKernel():
			state = "mounted (kernel, ro)"
		case m.ReadOnly:
			state += " (ro)"
		}
		upper := m.Upper
		if upper == "" {
			upper = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Mountpoint, state, strconv.Itoa(m.PID), upper, strings.Join(m.Lowers, ":"))
	}
	return tw.Flush()
}
