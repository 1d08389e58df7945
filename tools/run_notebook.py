#!/usr/bin/env python
"""Execute notebooks the way `nbdev_test` does (skipping `#| eval: false` and `#| slow`/`#| cuda` cells) and save
their outputs, so the docs site shows results and plots. Usage: python tools/run_notebook.py nbs/01_data.ipynb ...
Run `nbdev_clean` afterwards (the Makefile's `export` target does)."""
import sys
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.process import NBProcessor

def run(fn:Path):
    nb = read_nb(fn)
    sources = [c.source for c in nb.cells]
    NBProcessor(fn, procs=[], nb=nb).process()  # parses `#|` directives into cell.directives_ (and strips them)
    for c, s in zip(nb.cells, sources): c.source = s
    skip = set(get_config().tst_flags.split())
    def no_eval(cell):
        if cell.cell_type != "code": return True
        d = getattr(cell, "directives_", {}) or {}
        return d.get("eval:", [""])[0].lower() == "false" or bool(skip & d.keys())
    with working_directory(fn.parent): CaptureShell(fn).run_all(nb, exc_stop=True, preproc=no_eval)
    for c in nb.cells: c.pop("directives_", None)
    write_nb(nb, fn)
    print(f"executed {fn}")

if __name__ == "__main__":
    for f in sys.argv[1:]: run(Path(f).resolve())
