// Package vcs reads what a build records about its source checkout.
package vcs

import (
	"context"
	"os/exec"
	"strings"
)

// Git returns the commit and branch of the git checkout containing dir.
// Outside a checkout both are empty. A detached HEAD has no branch.
func Git(ctx context.Context, dir string) (revision, branch string) {
	run := func(args ...string) string {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	revision = run("rev-parse", "--verify", "-q", "HEAD")
	if revision == "" {
		return "", ""
	}
	branch = run("symbolic-ref", "-q", "--short", "HEAD")
	return revision, branch
}
