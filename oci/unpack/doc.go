// Package unpack applies a layer tar, hostile until proven otherwise,
// into an empty layer dir (Apply): the checks that keep every entry
// inside the dir, each with the attack it stops beside it.
package unpack
