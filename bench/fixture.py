#!/usr/bin/env python3
"""Deterministic fixtures for bench/commit.sh.

  fixture.py base DIR [--files N] [--seed S]
      Write a Debian-like root tree of about N files (default 15000, ~90 MB at
      15000) into DIR. The tree is a stream of "packages"; a base of N files is
      the prefix of that stream that first reaches N files, so a 60000-file base
      contains the 15000-file base unchanged (the same delta applies to both).

  fixture.py delta ROOT [--seed S] [--base-files N]
      Apply the benchmark delta to ROOT (an overlayfs merged dir, or umoci's
      bundle rootfs): ~1000 files created or modified, spread over existing
      directories so that ~400 directories are copied up, plus a few deletions.
      Targets are chosen from the model of the N-file base (default 15000), not
      by reading ROOT, so the same operations run against every root.

  fixture.py stats DIR
      Print "files dirs symlinks other bytes" for a tree (lstat sizes of files).

Everything (names, sizes, contents, modes, mtimes) comes from seeded PRNGs.
"""
import argparse
import hashlib
import os
import random
import stat
import sys

BASE_MTIME = 1600000000   # every base entry
DELTA_MTIME = 1700000000  # files the delta writes
POOL_SIZE = 4 << 20
BLOCK = 8192

LANGS = ["de", "fr", "es", "it", "ja", "zh_CN", "pt_BR", "ru", "pl", "nl", "sv",
         "cs", "da", "fi", "hu", "ko", "tr", "uk", "ca", "el", "nb", "ro", "sk",
         "sl", "sr", "vi", "zh_TW", "id", "gl", "eu"]

SYLL = ["ba", "co", "de", "fu", "gi", "ka", "lo", "mi", "nu", "pa", "re", "si",
        "tu", "vo", "xa", "ze", "lib", "net", "gtk", "qt", "py", "x", "core",
        "util", "kit", "ssl", "gl", "db", "fs", "io", "dev", "sys"]


# ---------------------------------------------------------------- content pool

_pool = None


def pool():
    """4 MiB of mixed content: ~40% random, ~45% text, ~15% low entropy.
    gzip -6 gets it to roughly 60%, like a typical /usr."""
    global _pool
    if _pool is not None:
        return _pool
    r = random.Random(0x5EED)
    words = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 10)))
             for _ in range(3000)]
    out = bytearray()
    while len(out) < POOL_SIZE:
        k = r.random()
        if k < 0.40:
            out += r.randbytes(BLOCK)
        elif k < 0.85:
            line = []
            n = 0
            while n < BLOCK:
                w = r.choice(words)
                line.append(w)
                n += len(w) + 1
                if r.random() < 0.08:
                    line.append("\n")
            out += " ".join(line).encode()[:BLOCK]
        else:
            pat = r.randbytes(r.randint(1, 64))
            out += (pat * (BLOCK // len(pat) + 1))[:BLOCK]
    _pool = bytes(out[:POOL_SIZE])
    return _pool


def content(key, size):
    p = pool()
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    off = h % POOL_SIZE
    if off + size <= POOL_SIZE:
        return p[off:off + size]
    out = bytearray()
    while len(out) < size:
        n = min(size - len(out), POOL_SIZE - off)
        out += p[off:off + n]
        off = (off + 7919) % POOL_SIZE
    return bytes(out)


# ---------------------------------------------------------------- the model

def lognorm(r, median, sigma, lo, hi):
    return int(min(hi, max(lo, r.lognormvariate(0, sigma) * median)))


class Entry:
    __slots__ = ("path", "kind", "size", "mode", "uid", "gid", "target")

    def __init__(self, path, kind, size=0, mode=0o644, uid=0, gid=0, target=None):
        self.path, self.kind, self.size, self.mode = path, kind, size, mode
        self.uid, self.gid, self.target = uid, gid, target


def package(seed, i):
    """The entries of package i (files and symlinks; dirs are implied)."""
    r = random.Random(f"{seed}/pkg/{i}")
    name = "".join(r.choice(SYLL) for _ in range(r.randint(1, 3))) + str(i)
    ents = []

    def f(path, median, sigma=1.0, lo=64, hi=4 << 20, mode=0o644, uid=0, gid=0):
        ents.append(Entry(path, "f", lognorm(r, median, sigma, lo, hi), mode, uid, gid))

    def ln(path, target):
        ents.append(Entry(path, "l", target=target, mode=0o777))

    doc = f"usr/share/doc/{name}"
    f(f"{doc}/copyright", 2500, 0.6)
    f(f"{doc}/changelog.Debian.gz", 4000, 1.0)
    if r.random() < 0.4:
        f(f"{doc}/README", 3000, 0.8)
    if r.random() < 0.2:
        f(f"{doc}/NEWS.gz", 6000, 1.0)
    f(f"var/lib/dpkg/info/{name}.list", 1500, 0.8)
    f(f"var/lib/dpkg/info/{name}.md5sums", 1200, 0.8)
    if r.random() < 0.3:
        for s in ("postinst", "prerm"):
            f(f"var/lib/dpkg/info/{name}.{s}", 600, 0.7, mode=0o755)

    kind = r.random()
    if kind < 0.38:  # shared library
        so = f"usr/lib/x86_64-linux-gnu/lib{name}.so"
        maj = r.randint(0, 9)
        real = f"{so}.{maj}.{r.randint(0, 20)}.{r.randint(0, 9)}"
        f(real, 45000, 1.0, 8000)
        ln(f"{so}.{maj}", os.path.basename(real))
        if r.random() < 0.3:
            for k in range(r.randint(2, 10)):
                f(f"usr/lib/x86_64-linux-gnu/{name}/plugin{k}.so", 15000, 0.9, 4000)
        if r.random() < 0.3:
            for lang in r.sample(LANGS, r.randint(5, 25)):
                f(f"usr/share/locale/{lang}/LC_MESSAGES/{name}.mo", 4000, 0.8, 500)
    elif kind < 0.62:  # tools
        for k in range(r.randint(1, 5)):
            b = f"{name}-{k}" if k else name
            sbin = r.random() < 0.15
            f(f"usr/{'sbin' if sbin else 'bin'}/{b}", 15000, 1.1, 2000,
              mode=0o4755 if r.random() < 0.02 else 0o755)
            f(f"usr/share/man/man{8 if sbin else 1}/{b}.{8 if sbin else 1}.gz", 2500, 0.8, 300)
        if r.random() < 0.3:
            ln(f"usr/bin/{name}-alt", name)
        if r.random() < 0.4:
            for k in range(r.randint(1, 4)):
                f(f"etc/{name}/{name}{k}.conf", 1200, 1.0, 50)
        if r.random() < 0.4:
            for k in range(r.randint(1, 20)):
                sub = f"/{r.choice(['data', 'templates', 'scripts'])}" if r.random() < 0.5 else ""
                f(f"usr/share/{name}{sub}/f{k}.dat", 2000, 1.1, 100)
        if r.random() < 0.3:
            for lang in r.sample(LANGS, r.randint(5, 25)):
                f(f"usr/share/locale/{lang}/LC_MESSAGES/{name}.mo", 4000, 0.8, 500)
    elif kind < 0.77:  # python package
        top = f"usr/lib/python3/dist-packages/{name}"
        subs = [top]
        for _ in range(r.randint(0, 5)):
            parent = r.choice(subs)
            subs.append(f"{parent}/{r.choice(SYLL)}{len(subs)}")
        for s in subs:
            f(f"{s}/__init__.py", 400, 1.5, 0)
            for k in range(r.randint(1, 12)):
                f(f"{s}/m{k}.py", 3500, 1.0, 200)
        di = f"usr/lib/python3/dist-packages/{name}-1.{i % 10}.dist-info"
        for m in ("METADATA", "RECORD", "WHEEL", "top_level.txt"):
            f(f"{di}/{m}", 900, 0.8, 20)
    elif kind < 0.88:  # data
        top = f"usr/share/{name}"
        subs = [top] + [f"{top}/{r.choice(['icons', 'themes', 'sounds', 'pixmaps'])}/{d}"
                        for d in range(r.randint(1, 6))]
        for k in range(r.randint(20, 150)):
            f(f"{r.choice(subs)}/d{k}.{r.choice(['png', 'svg', 'xml', 'json'])}", 1500, 1.1, 100)
        if r.random() < 0.2:
            for k in range(r.randint(1, 5)):
                f(f"var/lib/{name}/state{k}", 800, 1.0, 10, mode=0o640, uid=100 + i % 50, gid=100 + i % 50)
    else:  # -dev
        for k in range(r.randint(5, 40)):
            f(f"usr/include/{name}/h{k}.h", 3500, 0.9, 200)
        f(f"usr/lib/x86_64-linux-gnu/pkgconfig/{name}.pc", 300, 0.3, 100)
        f(f"usr/lib/x86_64-linux-gnu/lib{name}.a", 60000, 1.0, 5000)
        ln(f"usr/lib/x86_64-linux-gnu/lib{name}.so", f"lib{name}.so.1")
    return ents


def model(seed, nfiles):
    """Packages 0..k, k the first at which the file count reaches nfiles."""
    ents, seen, n, i = [], set(), 0, 0
    while n < nfiles:
        for e in package(seed, i):
            if e.path in seen:
                continue
            seen.add(e.path)
            ents.append(e)
            n += e.kind == "f"
        i += 1
    return ents


def dirs_of(ents):
    ds = set()
    for e in ents:
        p = os.path.dirname(e.path)
        while p:
            ds.add(p)
            p = os.path.dirname(p)
    return ds


# ---------------------------------------------------------------- base

TOP_DIRS = {"etc", "tmp", "var/tmp", "root", "home", "srv", "opt"}


def write_base(root, seed, nfiles):
    write_tree(root, seed, model(seed, nfiles))


def write_tree(root, seed, ents, top=True):
    """Write ents (entries of model() or a part of them, see cache_fixture.py)
    into root, with the directories they need, everything at BASE_MTIME.
    top: also the top dirs (tmp, root, ...) and the merged-usr links, which
    a whole base has and only the first of cache_fixture.py's parts."""
    ds = dirs_of(ents)
    if top:
        ds |= TOP_DIRS
    ds = sorted(ds)
    os.makedirs(root, exist_ok=True)
    for d in ds:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    if top:
        os.chmod(os.path.join(root, "tmp"), 0o1777)
        os.chmod(os.path.join(root, "root"), 0o700)
    for e in ents:
        p = os.path.join(root, e.path)
        if e.kind == "f":
            with open(p, "wb") as fh:
                fh.write(content(f"{seed}/{e.path}", e.size))
            os.chown(p, e.uid, e.gid)
            os.chmod(p, e.mode)
            os.utime(p, (BASE_MTIME, BASE_MTIME))
        else:
            os.symlink(e.target, p)
            os.utime(p, (BASE_MTIME, BASE_MTIME), follow_symlinks=False)
    if top:
        # merged-usr links, as on Debian 12
        for l in ("bin", "sbin", "lib", "lib64"):
            os.symlink(f"usr/{l}" if l != "lib64" else "usr/lib", os.path.join(root, l))
            os.utime(os.path.join(root, l), (BASE_MTIME, BASE_MTIME), follow_symlinks=False)
    for d in reversed(ds):
        os.utime(os.path.join(root, d), (BASE_MTIME, BASE_MTIME))
    os.utime(root, (BASE_MTIME, BASE_MTIME))


# ---------------------------------------------------------------- delta

def plan_delta(seed, base_files, n_new=600, n_mod=375, n_chmod=25, n_rm=8, target_dirs=400):
    """The delta's operations, as a list of (op, path, arg)."""
    r = random.Random(f"{seed}/delta")
    ents = model(seed, base_files)
    files = [e for e in ents if e.kind == "f"]
    by_dir = {}
    for e in files:
        by_dir.setdefault(os.path.dirname(e.path), []).append(e)
    cand = sorted(by_dir)
    r.shuffle(cand)
    # pick leaf dirs until their ancestor closure has target_dirs dirs
    chosen, closure = [], set()
    for d in cand:
        add = set()
        p = d
        while p and p not in closure:
            add.add(p)
            p = os.path.dirname(p)
        if len(closure) + len(add) > target_dirs:
            continue
        chosen.append(d)
        closure |= add
        if len(closure) >= target_dirs - 2:
            break
    ops = []
    used = set()
    # a whole directory removed: a small leaf dir among the chosen (not the
    # home of any other op)
    small = sorted((d for d in chosen if len(by_dir[d]) <= 4 and
                    not any(x.startswith(d + "/") for x in by_dir if x != d)))
    rmdir = small[0] if small else None
    work = [d for d in chosen if d != rmdir]
    modifiable = [e for d in work for e in by_dir[d] if e.size <= 48 << 10]
    r.shuffle(modifiable)
    for e in modifiable[:n_mod]:
        size = lognorm(r, max(e.size, 600), 0.3, 64, 64 << 10)
        ops.append(("mod", e.path, size))
        used.add(e.path)
    for e in modifiable[n_mod:n_mod + n_chmod]:
        ops.append(("chmod", e.path, 0o755 if e.mode != 0o755 else 0o700))
        used.add(e.path)
    rest = [e for e in modifiable[n_mod + n_chmod:] if e.path not in used]
    for e in rest[:n_rm]:
        ops.append(("rm", e.path, None))
        used.add(e.path)
    # new files: every chosen dir gets at least one op so its copy-up happens
    touched = {os.path.dirname(p) for p in used}
    order = [d for d in work if d not in touched]
    while len(order) < n_new:
        order.append(r.choice(work))
    for k, d in enumerate(order[:n_new]):
        ext = r.choice(["", ".py", ".so", ".conf", ".txt", ".gz", ".dat"])
        ops.append(("new", f"{d}/new{k}{ext}", lognorm(r, 4000, 1.1, 40, 256 << 10)))
    if rmdir:
        ops.append(("rmdir", rmdir, None))
    return ops


def apply_delta(root, seed, base_files):
    ops = plan_delta(seed, base_files)
    for op, path, arg in ops:
        p = os.path.join(root, path)
        if op == "new":
            with open(p, "wb") as fh:
                fh.write(content(f"{seed}/delta/{path}", arg))
            os.chmod(p, 0o644)
            os.utime(p, (DELTA_MTIME, DELTA_MTIME))
        elif op == "mod":
            with open(p, "r+b") as fh:
                fh.truncate(0)
                fh.write(content(f"{seed}/delta/{path}", arg))
            os.utime(p, (DELTA_MTIME, DELTA_MTIME))
        elif op == "chmod":
            os.chmod(p, arg)
        elif op == "rm":
            os.unlink(p)
        elif op == "rmdir":
            for dp, dn, fn in os.walk(p, topdown=False):
                for x in fn:
                    os.unlink(os.path.join(dp, x))
                for x in dn:
                    os.rmdir(os.path.join(dp, x))
            os.rmdir(p)
    counts = {}
    for op, _, _ in ops:
        counts[op] = counts.get(op, 0) + 1
    print("delta: " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())), file=sys.stderr)


# ---------------------------------------------------------------- stats

def stats(root):
    nf = nd = nl = no = size = 0
    for dp, dn, fn in os.walk(root):
        nd += len(dn)
        for x in fn + [d for d in dn if os.path.islink(os.path.join(dp, d))]:
            st = os.lstat(os.path.join(dp, x))
            if stat.S_ISREG(st.st_mode):
                nf += 1
                size += st.st_size
            elif stat.S_ISLNK(st.st_mode):
                nl += 1
            else:
                no += 1
    print(nf, nd, nl, no, size)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["base", "delta", "stats", "model"])
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--files", type=int, default=15000)
    ap.add_argument("--base-files", type=int, default=15000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.cmd == "base":
        write_base(a.dir, a.seed, a.files)
    elif a.cmd == "delta":
        apply_delta(a.dir, a.seed, a.base_files)
    elif a.cmd == "stats":
        stats(a.dir)
    elif a.cmd == "model":  # calibration aid: files, dirs, bytes of the model
        ents = model(a.seed, a.files)
        fs_ = [e for e in ents if e.kind == "f"]
        print(len(fs_), len(dirs_of(ents)), sum(e.size for e in fs_))
        ops = plan_delta(a.seed, a.base_files)
        print(len(ops), sum(x[2] for x in ops if x[0] in ("new", "mod")))


if __name__ == "__main__":
    main()
