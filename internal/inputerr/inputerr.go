// Package inputerr marks errors caused by bad input (a wrong flag, a
// missing path, a malformed reference, a hostile layer), which the CLI
// reports with exit status 2 instead of 1.
package inputerr

import (
	"errors"
	"fmt"
)

type inputError struct{ err error }

func (e *inputError) Error() string { return e.err.Error() }
func (e *inputError) Unwrap() error { return e.err }

// New returns a bad-input error with a formatted message; %w works.
func New(format string, args ...any) error {
	return &inputError{fmt.Errorf(format, args...)}
}

// Wrap marks err as caused by bad input. Wrap(nil) is nil.
func Wrap(err error) error {
	if err == nil || Is(err) {
		return err
	}
	return &inputError{err}
}

// Is reports whether err, or an error it wraps, is a bad-input error.
func Is(err error) bool {
	var ie *inputError
	return errors.As(err, &ie)
}
