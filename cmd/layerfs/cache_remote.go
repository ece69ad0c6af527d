package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/cache/remote"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/layers"
)

type cachePushCmd struct {
	Key   string `arg:"" help:"Entry key (a prefix of at least 4 hex digits) or entry dir name."`
	To    string `required:"" placeholder:"REF" help:"Registry tier, docker://HOST/REPO."`
	Force bool   `help:"Push even when the tier has the key (to replace a corrupt entry there)."`
}

func (c *cachePushCmd) Run(e *env, parent *cacheCmd) error {
	ca, err := parent.open()
	if err != nil {
		return err
	}
	t, err := parent.tier(c.To)
	if err != nil {
		return err
	}
	en, err := ca.Find(c.Key)
	if err != nil {
		return err
	}
	release, err := en.Use()
	if err != nil {
		return fmt.Errorf("cache entry %s: %w", en.Dir, err)
	}
	defer release()
	pushed, tr, err := t.Push(e.ctx, en, remote.PushOptions{Replace: c.Force})
	if err != nil {
		return err
	}
	if !pushed {
		fmt.Fprintf(e.stdout, "%s is in %s already\n", en.Name(), t)
		return nil
	}
	fmt.Fprintf(e.stdout, "pushed %s to %s: %d bytes uploaded\n", en.Name(), t, tr.Uploaded)
	return nil
}

type cachePullCmd struct {
	Key  string `arg:"" help:"Entry key: all 64 hex digits, or a prefix that one tag of the tier has."`
	From string `required:"" placeholder:"REF" help:"Registry tier, docker://HOST/REPO."`
}

func (c *cachePullCmd) Run(e *env, parent *cacheCmd) error {
	ca, err := parent.open()
	if err != nil {
		return err
	}
	t, err := parent.tier(c.From)
	if err != nil {
		return err
	}
	key := strings.TrimPrefix(c.Key, "sha256:")
	if len(key) < 4 || len(key) > 64 || strings.Trim(key, "0123456789abcdef") != "" {
		return inputerr.New("cache entry %q: want a key or key prefix of 4 to 64 lowercase hex digits", c.Key)
	}
	if len(key) < 64 {
		if key, err = remoteKey(e, t, key); err != nil {
			return err
		}
	}
	en, pulled, err := layers.PullEntry(e.ctx, ca, t, key, e.warn)
	if err != nil {
		return err
	}
	if !pulled {
		fmt.Fprintf(e.stdout, "%s is in the cache already\n", en.Name())
		return nil
	}
	fmt.Fprintf(e.stdout, "pulled %s from %s (%d bytes)\n", en.Name(), t, en.Info.Size)
	return nil
}

// remoteKey finds the one key of tier t that starts with prefix.
func remoteKey(e *env, t *remote.Tier, prefix string) (string, error) {
	ls, err := t.List(e.ctx)
	if err != nil {
		return "", err
	}
	var found []string
	for _, l := range ls {
		if strings.HasPrefix(l.Tag, prefix) {
			found = append(found, l.Tag)
		}
	}
	switch len(found) {
	case 0:
		return "", inputerr.New("cache %s: no entry matches %s", t, prefix)
	case 1:
		return found[0], nil
	}
	return "", inputerr.New("cache %s: %s is ambiguous (%d entries match); give more digits", t, prefix, len(found))
}

func (c *cacheLsCmd) remote(e *env, parent *cacheCmd) error {
	t, err := parent.tier(c.Remote)
	if err != nil {
		return err
	}
	ls, err := t.List(e.ctx)
	if err != nil {
		return err
	}
	if c.JSON {
		type item struct {
			remote.Listed
			Error string `json:"error,omitempty"`
		}
		items := []item{}
		for _, l := range ls {
			it := item{Listed: l}
			if l.Err != nil {
				it.Error = l.Err.Error()
			}
			items = append(items, it)
		}
		return json.NewEncoder(e.stdout).Encode(items)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tLAYER\tSIZE\tPUSHED")
	for _, l := range ls {
		if l.Err != nil {
			fmt.Fprintf(tw, "%s\t(not an entry: %v)\t\t\n", cache.ShortKey(l.Tag), l.Err)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cache.ShortKey(l.Tag), l.Name, cache.FormatSize(l.Size), l.Pushed.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

// remote deletes a tier's entries pushed before now - OlderThan (or all
// of them); tags that are not entries are left alone.
func (c *cachePruneCmd) remote(e *env, parent *cacheCmd) error {
	if c.MaxSize != "" {
		return inputerr.New("--max-size: a registry tier is pruned by age (--older-than) or --all")
	}
	if c.OlderThan <= 0 && !c.All {
		return inputerr.New("give --older-than D or --all")
	}
	t, err := parent.tier(c.Remote)
	if err != nil {
		return err
	}
	ls, err := t.List(e.ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	verb := "deleted"
	if c.DryRun {
		verb = "would delete"
	}
	var errs []error
	for _, l := range ls {
		if l.Err != nil || !c.All && l.Age(now) <= c.OlderThan {
			continue
		}
		if !c.DryRun {
			if err := t.Remove(e.ctx, l); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		fmt.Fprintf(e.stdout, "%s %s-%s (pushed %s)\n", verb, cache.ShortKey(l.Tag), l.Name, l.Pushed.Local().Format(time.DateTime))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d of the deletes failed; the first: %w", len(errs), errs[0])
	}
	return nil
}
