// Package view reads an image's merged filesystem from its layer blobs,
// with nothing unpacked: View (ls, cat, inspect, diff) merges the layers
// as unpackers do, Listing (the lower a commit onto an image is diffed
// against) as the union of their layer dirs does.
package view
