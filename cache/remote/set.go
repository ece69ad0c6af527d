package remote

import (
	"slices"
	"sync"
)

// Set opens tiers by reference, once each: a repository named twice (read
// and written, or by several specs of a build) is one Tier, so that its
// failures count once. It is safe for concurrent use.
type Set struct {
	opts  Options
	mu    sync.Mutex
	byRef map[string]*Tier
}

// NewSet returns an empty Set whose tiers are opened with opts.
func NewSet(opts Options) *Set {
	return &Set{opts: opts, byRef: map[string]*Tier{}}
}

func (s *Set) get(ref string) (*Tier, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.byRef[ref]; t != nil {
		return t, nil
	}
	t, err := Open(ref, s.opts)
	if err != nil {
		return nil, err
	}
	s.byRef[ref] = t
	return t, nil
}

// Open opens the tiers read from, in order and each once, and the tier
// written to ("" for none).
func (s *Set) Open(fromRefs []string, toRef string) (from []*Tier, to *Tier, err error) {
	for _, r := range fromRefs {
		t, err := s.get(r)
		if err != nil {
			return nil, nil, err
		}
		if !slices.Contains(from, t) {
			from = append(from, t)
		}
	}
	if toRef != "" {
		if to, err = s.get(toRef); err != nil {
			return nil, nil, err
		}
	}
	return from, to, nil
}
