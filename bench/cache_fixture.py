#!/usr/bin/env python3
"""Fixtures for bench/cache.sh, made with bench/fixture.py's generator.

  cache_fixture.py parts DIR [--files N] [--parts K] [--seed S]
      Write the N-file Debian-like base of `fixture.py base DIR --files N
      --seed S` split into K trees DIR/p1 .. DIR/pK (default 3), by package:
      the package stream is cut where the file count passes N/K, 2N/K, ...
      Every path is in exactly one part; directories are in every part that
      has something below them (same mode and mtime in all), and the merged-usr
      links and the empty top dirs (tmp, root, ...) are in p1. Copying p1,
      then p2, ... over one another (`cp -a`) gives the base of N files.

The restore fixtures are `fixture.py base` itself (a 150,000-file base holds the
15,000-file one as its prefix); nothing here changes what fixture.py makes.
"""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # no bench/__pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture as fx  # noqa: E402


def split(seed, nfiles, nparts):
    """fixture.model(seed, nfiles), each entry tagged with its part."""
    parts = [[] for _ in range(nparts)]
    seen, n, i = set(), 0, 0
    while n < nfiles:
        k = min(nparts - 1, n * nparts // nfiles)
        for e in fx.package(seed, i):
            if e.path in seen:
                continue
            seen.add(e.path)
            parts[k].append(e)
            n += e.kind == "f"
        i += 1
    return parts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["parts"])
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=15000)
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    for k, ents in enumerate(split(a.seed, a.files, a.parts)):
        fx.write_tree(os.path.join(a.dir, f"p{k + 1}"), a.seed, ents, top=k == 0)
        nf = sum(e.kind == "f" for e in ents)
        print(f"p{k + 1}: {nf} files, {sum(e.size for e in ents if e.kind == 'f')} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
