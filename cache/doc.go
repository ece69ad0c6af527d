// Package cache is the content-addressed local layer cache (DESIGN.md
// "Cache"): entries named <key16>-<layer> that hold a mountable layer dir,
// its compressed blob, entry.json and the Yocto class's .oci-layer-cache
// marker; per-key locks; atomic insertion; last-used tracking, pruning,
// removal and verification.
//
// The caller (package layers) computes keys and runs builds; this package
// only stores and hands out their results. A build goes:
//
//	unlock, err := c.Lock(ctx, key)
//	e, err := c.Lookup(key, name)  // a hit: release, err := e.Use(); mount e.Rootfs()
//	t, err := c.NewTemp(name)      // a miss: build into t.Rootfs(), write t.BlobPath()
//	e, err = c.Insert(ctx, t, info)
//	release, err := e.Use()
//	unlock()
//
// Holding the key lock from Lookup to Use keeps Prune and Remove, which
// skip locked keys, from taking the entry away in between; the Use lock
// then keeps it for as long as a mount needs it.
//
// Crash safety: an entry appears only by an atomic rename of a complete,
// synced temp dir, and leaves only by a rename to a temp or quarantine
// name; a half-written or half-removed entry is never under an entry name.
// Temp dirs live in .tmp/ next to a lock file that their owner holds for
// as long as it lives, so the next Open or Insert removes exactly those
// of dead owners, whatever pid namespace they ran in.
package cache
