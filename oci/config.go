package oci

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// ConfigChanges are edits to an image config. Nil pointers and nil slices
// leave a field as inherited.
type ConfigChanges struct {
	Entrypoint []string // exec form; non-nil replaces
	Cmd        []string // exec form; non-nil replaces
	Env        []string // K=V, merged: the same key is replaced
	Labels     map[string]string
	Ports      []string // 80/tcp
	User       *string
	WorkingDir *string
	StopSignal *string
	OS         string
	Arch       string
	Variant    string
	Author     string
	// ClearEnv, ClearLabels and ClearPorts drop the inherited values before
	// Env, Labels and Ports apply: a build spec's empty env: {} clears.
	ClearEnv, ClearLabels, ClearPorts bool
	// SortEnv writes Env sorted by name, as build specs promise.
	SortEnv bool
}

var portPattern = regexp.MustCompile(`^[0-9]{1,5}(-[0-9]{1,5})?(/(tcp|udp|sctp))?$`)

// Validate checks the changes as the CLI receives them; errors are bad
// input and name the flag.
func (c *ConfigChanges) Validate() error {
	for _, e := range c.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return inputerr.New("--env %q: want KEY=VALUE", e)
		}
	}
	for k := range c.Labels {
		if k == "" {
			return inputerr.New("--label: empty key")
		}
	}
	for _, p := range c.Ports {
		if !portPattern.MatchString(p) {
			return inputerr.New("--port %q: want PORT[/tcp|udp|sctp]", p)
		}
	}
	return nil
}

// config is an image config as a JSON object. Fields layerfs does not
// know (Docker's Healthcheck, OnBuild, …) are carried over untouched.
type config map[string]json.RawMessage

func parseConfig(raw []byte) (config, error) {
	c := config{}
	if len(raw) == 0 {
		return c, nil
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	return c, nil
}

func (c config) get(key string, v any) {
	if raw, ok := c[key]; ok {
		json.Unmarshal(raw, v) // a malformed field reads as unset
	}
}

func (c config) set(key string, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err) // only marshalable values are set
	}
	c[key] = data
}

// historyEntry is one element of config.history.
type historyEntry struct {
	Created    *time.Time `json:"created,omitempty"`
	CreatedBy  string     `json:"created_by,omitempty"`
	Author     string     `json:"author,omitempty"`
	Comment    string     `json:"comment,omitempty"`
	EmptyLayer bool       `json:"empty_layer,omitempty"`
}

// appendLayer adds a layer to the config: its diff_id and history entry.
// Keeping rootfs.diff_ids and the non-empty history entries in step with
// the manifest's layers is its job.
func (c config) appendLayer(diffID digest.Digest, h historyEntry) {
	var rootfs struct {
		Type    string          `json:"type"`
		DiffIDs []digest.Digest `json:"diff_ids"`
	}
	c.get("rootfs", &rootfs)
	rootfs.Type = "layers"

	var history []historyEntry
	c.get("history", &history)
	nonEmpty := 0
	for _, h := range history {
		if !h.EmptyLayer {
			nonEmpty++
		}
	}
	// A base without history (or with less than its layers) gets entries
	// for the layers it does not describe, so that history[i] lines up.
	for ; nonEmpty < len(rootfs.DiffIDs); nonEmpty++ {
		history = append(history, historyEntry{CreatedBy: "layer without history"})
	}
	rootfs.DiffIDs = append(rootfs.DiffIDs, diffID)
	history = append(history, h)
	c.set("rootfs", rootfs)
	c.set("history", history)
}

// apply edits the config as Docker's builder would for the same flags.
func (c config) apply(ch *ConfigChanges) {
	if ch.OS != "" {
		c.set("os", ch.OS)
	}
	if ch.Arch != "" {
		c.set("architecture", ch.Arch)
	}
	if ch.Variant != "" {
		c.set("variant", ch.Variant)
	}
	if ch.Author != "" {
		c.set("author", ch.Author)
	}
	rc := config{}
	c.get("config", &rc)
	if ch.Entrypoint != nil {
		rc.set("Entrypoint", ch.Entrypoint)
		if ch.Cmd == nil {
			// A new entrypoint makes the old Cmd meaningless (Docker drops it too).
			delete(rc, "Cmd")
		}
	}
	if ch.Cmd != nil {
		rc.set("Cmd", ch.Cmd)
	}
	if ch.ClearEnv {
		delete(rc, "Env")
	}
	if ch.ClearLabels {
		delete(rc, "Labels")
	}
	if ch.ClearPorts {
		delete(rc, "ExposedPorts")
	}
	if len(ch.Env) > 0 || ch.SortEnv {
		var env []string
		rc.get("Env", &env)
		for _, kv := range ch.Env {
			k, _, _ := strings.Cut(kv, "=")
			env = slices.DeleteFunc(env, func(e string) bool { ek, _, _ := strings.Cut(e, "="); return ek == k })
			env = append(env, kv)
		}
		if ch.SortEnv {
			slices.SortStableFunc(env, func(a, b string) int {
				ak, _, _ := strings.Cut(a, "=")
				bk, _, _ := strings.Cut(b, "=")
				return strings.Compare(ak, bk)
			})
		}
		if len(env) > 0 {
			rc.set("Env", env)
		}
	}
	if len(ch.Labels) > 0 {
		labels := map[string]string{}
		rc.get("Labels", &labels)
		maps.Copy(labels, ch.Labels)
		rc.set("Labels", labels)
	}
	if len(ch.Ports) > 0 {
		ports := map[string]struct{}{}
		rc.get("ExposedPorts", &ports)
		for _, p := range ch.Ports {
			if !strings.Contains(p, "/") {
				p += "/tcp"
			}
			ports[p] = struct{}{}
		}
		rc.set("ExposedPorts", ports)
	}
	if ch.User != nil {
		rc.set("User", *ch.User)
	}
	if ch.WorkingDir != nil {
		rc.set("WorkingDir", *ch.WorkingDir)
	}
	if ch.StopSignal != nil {
		rc.set("StopSignal", *ch.StopSignal)
	}
	if len(rc) > 0 {
		c.set("config", rc)
	} else if _, ok := c["config"]; ok && (ch.ClearEnv || ch.ClearLabels || ch.ClearPorts) {
		c.set("config", rc)
	}
}

// platform reads os/architecture/variant.
func (c config) platform() (os, arch, variant string) {
	c.get("os", &os)
	c.get("architecture", &arch)
	c.get("variant", &variant)
	return
}

func (c config) marshal() ([]byte, error) {
	data, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return data, nil
}
