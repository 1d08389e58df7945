#!/usr/bin/env python
"""Copy the pipeline notebooks (nbs/pipelines/*.ipynb, the source) into the package (finetune_nb/pipelines/), where
`pip install` ships them as package data and `finetune-nb run`/`demo` find them from any directory.

`--check` changes nothing and exits 1 when the package copies differ from the sources (CI and `make lint-sync`)."""
import shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC, DST = ROOT/"nbs"/"pipelines", ROOT/"finetune_nb"/"pipelines"

def stale()->list[str]:
    "Package copies that are missing, different, or have no source any more."
    src = {p.name: p for p in SRC.glob("*.ipynb")}
    dst = {p.name: p for p in DST.glob("*.ipynb")} if DST.is_dir() else {}
    return sorted([n for n, p in src.items() if n not in dst or dst[n].read_bytes() != p.read_bytes()] + [n for n in dst if n not in src])

def sync()->list[str]:
    "Make the package copies equal to the sources; return the names that changed."
    changed = stale()
    DST.mkdir(exist_ok=True)
    for n in changed:
        if (SRC/n).exists(): shutil.copyfile(SRC/n, DST/n)
        else: (DST/n).unlink()
    return changed

if __name__ == "__main__":
    if "--check" in sys.argv:
        s = stale()
        if s: sys.exit(f"finetune_nb/pipelines is out of date ({', '.join(s)}): run `make export` (tools/sync_pipelines.py)")
    else:
        for n in sync(): print(f"synced finetune_nb/pipelines/{n}")
