package layer

import (
	"path"
	"slices"
	"strings"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// Exclude patterns name paths that a layer never carries, e.g.
// /var/cache/**. Their syntax and meaning:
//
//   - A pattern is an absolute path in the image: it starts with "/" and
//     its components are separated by single slashes. Empty, "." and ".."
//     components are refused, and so is "/" alone.
//   - Within one component, "*" matches any run of characters and "?"
//     matches one; "[...]" classes and "\" escapes work as in path.Match.
//     Neither ever matches a "/".
//   - A component that is exactly "**" matches any number (zero or more)
//     of whole components: /**/*.pyc matches /a.pyc and /usr/lib/b.pyc.
//     A trailing "/**" matches one or more, so that it names what lies
//     beneath a directory and not the directory itself.
//   - A pattern that matches a directory excludes the directory entry and
//     everything beneath it. /var/cache/** therefore excludes everything
//     beneath /var/cache, while /var/cache itself is still emitted when its
//     own metadata changed; /var/cache excludes the directory too.
//   - An excluded path yields no entry and no whiteout: the layer neither
//     adds, changes nor deletes it, so whatever the layers below have
//     there shows through. A hardlink group whose first name is excluded
//     is carried by its next name.

// ExcludeMatcher matches image paths against compiled exclude patterns.
// The zero value and nil match nothing.
type ExcludeMatcher struct {
	patterns [][]string // components; "**" is the multi-component wildcard
}

// ValidateExclude checks exclude patterns without keeping them; the error
// is bad input (internal/inputerr) and names the first bad pattern.
func ValidateExclude(patterns []string) error {
	_, err := NewExcludeMatcher(patterns)
	return err
}

// NewExcludeMatcher compiles exclude patterns, refusing malformed ones with
// a bad-input error that names the pattern.
func NewExcludeMatcher(patterns []string) (*ExcludeMatcher, error) {
	m := &ExcludeMatcher{}
	for _, p := range patterns {
		elems, err := compileExclude(p)
		if err != nil {
			return nil, err
		}
		m.patterns = append(m.patterns, elems)
	}
	return m, nil
}

func compileExclude(p string) ([]string, error) {
	rest, ok := strings.CutPrefix(p, "/")
	if !ok {
		return nil, inputerr.New("exclude pattern %q: not an absolute path; start it with /", p)
	}
	if rest == "" {
		return nil, inputerr.New("exclude pattern %q: names the root, which would exclude the whole image", p)
	}
	elems := strings.Split(rest, "/")
	for _, e := range elems {
		switch e {
		case "":
			return nil, inputerr.New("exclude pattern %q: empty path component (a doubled or trailing /)", p)
		case ".", "..":
			return nil, inputerr.New("exclude pattern %q: %q components are not allowed; write the path it means", p, e)
		case "**":
			continue
		}
		// path.Match checks the whole pattern's syntax even when the name
		// does not match.
		if _, err := path.Match(e, ""); err != nil {
			return nil, inputerr.New("exclude pattern %q: component %q: %v", p, e, err)
		}
	}
	if n := len(elems); elems[n-1] == "**" {
		// A trailing "**" matches one or more components; since whatever
		// lies beneath a match is excluded anyway, that is the same as
		// one component of any name.
		elems[n-1] = "*"
	}
	return elems, nil
}

// Excluded reports whether the image path p, or a directory above it, is
// matched by a pattern, i.e. whether a layer leaves p out. p is absolute or
// relative to the image root (as tar names are); a trailing slash is
// ignored. The root is never excluded.
func (m *ExcludeMatcher) Excluded(p string) bool {
	if m == nil || len(m.patterns) == 0 {
		return false
	}
	p = strings.Trim(path.Clean("/"+p), "/")
	if p == "" {
		return false
	}
	comps := strings.Split(p, "/")
	for _, pat := range m.patterns {
		if matchPrefix(pat, comps) {
			return true
		}
	}
	return false
}

// matches reports whether the clean relative path rel itself is matched.
// The differ never descends into an excluded directory, so it only asks
// about a path whose ancestors are known not to match.
func (m *ExcludeMatcher) matches(rel string) bool {
	if m == nil || len(m.patterns) == 0 || rel == "" {
		return false
	}
	comps := strings.Split(rel, "/")
	for _, pat := range m.patterns {
		if st := walkPattern(pat, comps); st != nil && st[len(pat)] {
			return true
		}
	}
	return false
}

// matchesBelow reports whether a pattern could match some path strictly
// beneath the directory rel.
func (m *ExcludeMatcher) matchesBelow(rel string) bool {
	if m == nil {
		return false
	}
	var comps []string
	if rel != "" {
		comps = strings.Split(rel, "/")
	}
	for _, pat := range m.patterns {
		st := walkPattern(pat, comps)
		// Any pattern position short of the end can still be completed by
		// some further components: every component glob matches some name.
		if st != nil && slices.Contains(st[:len(pat)], true) {
			return true
		}
	}
	return false
}

// matchPrefix reports whether pat matches comps or one of its leading
// parts (an ancestor directory).
func matchPrefix(pat, comps []string) bool {
	st := closeStars(pat, make([]bool, len(pat)+1), 0)
	for _, c := range comps {
		if st = step(pat, st, c); st == nil {
			return false
		}
		if st[len(pat)] {
			return true
		}
	}
	return false
}

// walkPattern runs pat's automaton over comps: the result marks the
// pattern positions reachable after all of them (nil when none is). A set
// of positions instead of backtracking keeps the cost linear in the path
// length whatever the number of "**".
func walkPattern(pat, comps []string) []bool {
	st := closeStars(pat, make([]bool, len(pat)+1), 0)
	for _, c := range comps {
		if st = step(pat, st, c); st == nil {
			return nil
		}
	}
	return st
}

func step(pat []string, st []bool, c string) []bool {
	next := make([]bool, len(pat)+1)
	alive := false
	for i, on := range st[:len(pat)] {
		if !on {
			continue
		}
		if pat[i] == "**" {
			next[i] = true // "**" swallows c and stays
			alive = true
			continue
		}
		if ok, _ := path.Match(pat[i], c); ok {
			next[i+1] = true
			alive = true
		}
	}
	if !alive {
		return nil
	}
	for i := range next {
		if next[i] {
			closeStars(pat, next, i)
		}
	}
	return next
}

// closeStars marks position i and every position reachable from it by
// letting "**" match zero components.
func closeStars(pat []string, st []bool, i int) []bool {
	for ; i <= len(pat); i++ {
		st[i] = true
		if i == len(pat) || pat[i] != "**" {
			break
		}
	}
	return st
}
