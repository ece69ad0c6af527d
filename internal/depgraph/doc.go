// Package depgraph holds no code: its test checks that the module's
// import graph flows one way (cmd, then layers, then the cache, fs and
// oci, then overlay) and that the rules with one home are written
// nowhere else.
package depgraph
