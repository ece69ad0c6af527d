package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/cache/remote"
	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/layers"
)

type cacheCmd struct {
	Dir      string        `name:"cache" placeholder:"DIR" help:"Layer cache (default: $XDG_CACHE_HOME/layerfs)."`
	Insecure bool          `help:"Allow plain HTTP to a registry tier."`
	Timeout  time.Duration `default:"30s" placeholder:"D" help:"Give up on a registry tier that answers nothing for D."`

	Ls      cacheLsCmd      `cmd:"" help:"List the cache's entries (or, with --remote, a registry tier's)."`
	Prune   cachePruneCmd   `cmd:"" help:"Remove old entries, least recently used first; entries in use by a build or a mount stay. With --remote, delete a registry tier's old tags."`
	Rm      cacheRmCmd      `cmd:"" help:"Remove one entry, by key (a 16-hex prefix will do) or name."`
	Verify  cacheVerifyCmd  `cmd:"" help:"Re-hash every entry; corrupt ones are moved to the quarantine."`
	Explain cacheExplainCmd `cmd:"" help:"Say, for every layer of a spec, hit or miss, and which input changed since the closest entry."`
	Push    cachePushCmd    `cmd:"" help:"Put a local entry into a registry tier."`
	Pull    cachePullCmd    `cmd:"" help:"Fetch an entry from a registry tier into the local cache."`
}

func (c *cacheCmd) tier(ref string) (*remote.Tier, error) {
	return remote.Open(ref, remote.Options{Insecure: c.Insecure, Timeout: c.Timeout})
}

func (c *cacheCmd) open() (*cache.Cache, error) {
	dir := c.Dir
	if dir == "" {
		dir = cache.DefaultDir()
	}
	return cache.Open(dir)
}

// openForRemoval opens the cache with the check of live mounts that
// removals must honour.
func (c *cacheCmd) openForRemoval() (*cache.Cache, func(string) bool, error) {
	ca, err := c.open()
	if err != nil {
		return nil, nil, err
	}
	inUse, err := fs.InUse()
	return ca, inUse, err
}

type cacheLsCmd struct {
	JSON   bool   `name:"json" help:"Print the entries as JSON."`
	Remote string `placeholder:"REF" help:"List the entries of this registry tier (docker://HOST/REPO) instead."`
}

func (c *cacheLsCmd) Run(e *env, parent *cacheCmd) error {
	if c.Remote != "" {
		return c.remote(e, parent)
	}
	ca, err := parent.open()
	if err != nil {
		return err
	}
	entries, err := ca.List(e.ctx)
	if err != nil {
		return err
	}
	if c.JSON {
		return json.NewEncoder(e.stdout).Encode(entries)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tLAYER\tTYPE\tSIZE\tLAST USED\tCONTENT")
	for _, en := range entries {
		what := strings.Join(en.Info.Packages, " ")
		if what == "" {
			what = en.Info.Inputs["paths"]
		}
		if en.Info.Type == "base" {
			what = en.Info.DiffID.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", cache.ShortKey(en.Info.Key), en.Info.Name, en.Info.Type,
			cache.FormatSize(en.DiskSize), en.LastUsed.Local().Format(time.DateTime), what)
	}
	return tw.Flush()
}

type cachePruneCmd struct {
	OlderThan time.Duration `placeholder:"D" help:"Remove entries not used for D (e.g. 720h); with --remote, pushed more than D ago."`
	MaxSize   string        `placeholder:"SIZE" help:"Evict least recently used entries until the cache is at most SIZE (e.g. 20G)."`
	All       bool          `help:"Remove every entry not in use."`
	DryRun    bool          `short:"n" help:"Only say what would be removed."`
	Remote    string        `placeholder:"REF" help:"Prune this registry tier (docker://HOST/REPO) instead: delete the tags of entries pushed more than --older-than ago."`
}

func (c *cachePruneCmd) Run(e *env, parent *cacheCmd) error {
	if c.Remote != "" {
		return c.remote(e, parent)
	}
	if c.OlderThan == 0 && c.MaxSize == "" && !c.All {
		return inputerr.New("give --older-than D, --max-size SIZE or --all")
	}
	var max int64
	if c.MaxSize != "" {
		var err error
		if max, err = cache.ParseSize(c.MaxSize); err != nil {
			return fmt.Errorf("--max-size: %w", err)
		}
	}
	ca, inUse, err := parent.openForRemoval()
	if err != nil {
		return err
	}
	removed, err := ca.Prune(e.ctx, cache.PruneOptions{OlderThan: c.OlderThan, MaxSize: max, All: c.All, InUse: inUse, DryRun: c.DryRun})
	verb := "removed"
	if c.DryRun {
		verb = "would remove"
	}
	for _, en := range removed {
		fmt.Fprintf(e.stdout, "%s %s (%s)\n", verb, en.Name(), cache.FormatSize(en.DiskSize))
	}
	return err
}

type cacheRmCmd struct {
	Key string `arg:"" help:"Entry key (a prefix of at least 4 hex digits) or entry dir name."`
}

func (c *cacheRmCmd) Run(e *env, parent *cacheCmd) error {
	ca, inUse, err := parent.openForRemoval()
	if err != nil {
		return err
	}
	removed, err := ca.Remove(c.Key, inUse)
	for _, en := range removed {
		fmt.Fprintf(e.stdout, "removed %s\n", en.Name())
	}
	return err
}

type cacheVerifyCmd struct{}

func (c *cacheVerifyCmd) Run(e *env, parent *cacheCmd) error {
	ca, err := parent.open()
	if err != nil {
		return err
	}
	results, err := ca.Verify(e.ctx)
	if err != nil {
		return err
	}
	bad, unchecked := 0, 0
	for _, r := range results {
		switch {
		case errors.Is(r.Err, cache.ErrCorrupt):
			bad++
			where := "left in place: in use"
			if r.Moved != "" {
				where = "moved to " + r.Moved
			}
			fmt.Fprintf(e.stdout, "CORRUPT   %s: %v (%s)\n", r.Entry.Name(), r.Err, where)
		case r.Err != nil:
			unchecked++
			fmt.Fprintf(e.stdout, "UNCHECKED %s: %v\n", r.Entry.Name(), r.Err)
		default:
			fmt.Fprintf(e.stdout, "ok        %s\n", r.Entry.Name())
		}
	}
	if bad > 0 || unchecked > 0 {
		return fmt.Errorf("%d of %d entries are corrupt, %d could not be checked", bad, len(results), unchecked)
	}
	return nil
}

type cacheExplainCmd struct {
	Spec string `arg:"" placeholder:"SPEC.yaml" help:"Build spec."`
	JSON bool   `name:"json" help:"Print the explanation as JSON."`
}

func (c *cacheExplainCmd) Run(e *env, parent *cacheCmd) error {
	spec, err := layers.Load(c.Spec)
	if err != nil {
		return err
	}
	ca, err := parent.open()
	if err != nil {
		return err
	}
	epoch, err := sourceDateEpoch("")
	if err != nil {
		return err
	}
	xs, err := layers.Explain(e.ctx, spec, ca, epoch)
	if err != nil {
		return err
	}
	if c.JSON {
		return json.NewEncoder(e.stdout).Encode(xs)
	}
	for _, x := range xs {
		fmt.Fprintln(e.stdout, x.Line())
	}
	return nil
}
