package remote

import (
	"strings"
	"testing"
)

// A repository named twice is one Tier; the tiers read from keep their
// order; a bad reference is an error naming it.
func TestSetOpensEachTierOnce(t *testing.T) {
	s := NewSet(Options{})
	a, b := "docker://127.0.0.1:5999/cache/a", "docker://127.0.0.1:5999/cache/b"
	from, to, err := s.Open([]string{b, a, b}, a)
	if err != nil {
		t.Fatal(err)
	}
	if len(from) != 2 || from[0] == from[1] || to != from[1] {
		t.Fatalf("from %v, to %v: want [b a] with to the same Tier as a", from, to)
	}
	again, _, err := s.Open([]string{a}, "")
	if err != nil || len(again) != 1 || again[0] != to {
		t.Errorf("a second Open of %s gave %v (%v), want the first Tier", a, again, err)
	}
	if _, _, err := s.Open([]string{"oci:/nope"}, ""); err == nil || !strings.Contains(err.Error(), "oci:/nope") {
		t.Errorf("bad ref: %v", err)
	}
}
