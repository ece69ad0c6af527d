package oci

import "errors"

// ErrDigestMismatch is wrapped by every error about a blob or manifest
// whose bytes do not match the digest (or size) that names it, and
// ErrDiffIDMismatch by those about a layer whose tar does not match its
// diff_id: what was read is not what was asked for.
var (
	ErrDigestMismatch = errors.New("content does not match its digest")
	ErrDiffIDMismatch = errors.New("content does not match its diff_id")
)
