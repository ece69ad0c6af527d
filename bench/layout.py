#!/usr/bin/env python3
"""layout.py LAYOUT TAG: print "NLAYERS SIZE DIGEST" of the top layer of TAG
in an OCI image layout (following one level of nested index if present)."""
import json
import os
import sys


def blob(layout, digest):
    alg, hexd = digest.split(":", 1)
    with open(os.path.join(layout, "blobs", alg, hexd)) as f:
        return json.load(f)


def main():
    layout, tag = sys.argv[1], sys.argv[2]
    with open(os.path.join(layout, "index.json")) as f:
        idx = json.load(f)
    descs = [d for d in idx.get("manifests", [])
             if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    if not descs:
        sys.exit(f"layout.py: no tag {tag!r} in {layout}/index.json")
    m = blob(layout, descs[-1]["digest"])
    if "manifests" in m:  # an image index: take its first manifest
        m = blob(layout, m["manifests"][0]["digest"])
    top = m["layers"][-1]
    print(len(m["layers"]), top["size"], top["digest"])


if __name__ == "__main__":
    main()
