package appliers

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/layerfs/layerfs/integration/tree"
)

// Report is the outcome of reconstructing an image with one applier and
// comparing the result with the expected tree.
type Report struct {
	// Refused is set when the applier was expected to refuse the image
	// and did (the text it was expected to fail with).
	Refused string
	// Unexpected are real disagreements: each one fails a test.
	Unexpected []tree.Difference
	// Known are documented limitations of the applier, with the reason.
	Known []string
}

// Verify reconstructs layoutDir:tag with a in the empty dir work, snapshots
// the result, undoes any mount, and compares it with want. An error means
// the applier failed where it should not have (or did not fail where it
// should), or the harness itself failed.
func (a Applier) Verify(ctx context.Context, layoutDir, tag, work string, want tree.Tree) (rep Report, err error) {
	refusal, err := a.Refusal(layoutDir, tag)
	if err != nil {
		return rep, err
	}
	root, cleanup, err := a.Apply(ctx, layoutDir, tag, work)
	if refusal != "" {
		if err == nil {
			return rep, errors.Join(fmt.Errorf("%s: expected to refuse the image (%q) but it applied it: drop the exception", a.Name, refusal), cleanup())
		}
		if !strings.Contains(err.Error(), refusal) {
			return rep, fmt.Errorf("%s: expected refusal %q, got: %w", a.Name, refusal, err)
		}
		rep.Refused = refusal
		return rep, nil
	}
	if err != nil {
		return rep, fmt.Errorf("%s: apply: %w", a.Name, err)
	}
	defer func() {
		if cerr := cleanup(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("%s: cleanup: %w", a.Name, cerr))
		}
	}()
	got, err := tree.Snapshot(root)
	if err != nil {
		return rep, fmt.Errorf("%s: %w", a.Name, err)
	}
	for _, d := range tree.Compare(want, got, a.DiffOptions) {
		if why := a.Known(d); why != "" {
			rep.Known = append(rep.Known, fmt.Sprintf("%s [known: %s]", d, why))
			continue
		}
		rep.Unexpected = append(rep.Unexpected, d)
	}
	return rep, nil
}
