#!/usr/bin/env python
"""Generate README.md from nbs/index.ipynb (nbconvert to Markdown; Quarto is not available here).

    python tools/make_readme.py            # (re)write README.md if it changed
    python tools/make_readme.py --check    # exit 1 if README.md is out of sync, 0 otherwise
    python tools/make_readme.py --execute  # re-run nbs/index.ipynb first (skipping `#| eval: false` cells)

nbdev directives are honoured the way nbdev's docs do: `#| hide` / `#| include: false` drop a cell,
`#| echo: false` keeps only its output, `#| output: false` keeps only its source, and directive lines
themselves never appear. Only text outputs are kept (README is read on GitHub and PyPI, where widgets
and embedded images don't belong); the output is deterministic, so running it twice changes nothing.
"""
from __future__ import annotations
import argparse, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.*?)\s*$")
_KEEP_MIME = ("text/markdown", "text/plain")   # the only output types README keeps


def parse_directives(source:str)->tuple[dict, str]:
    "Split the leading `#| key: value` lines off a code cell: `(directives, remaining source)`."
    lines, dirs = source.splitlines(), {}
    i = 0
    while i < len(lines) and (m := _DIRECTIVE.match(lines[i])):
        body = m.group(1)
        key, _, val = body.partition(":") if ":" in body else (body.split(" ")[0], "", " ".join(body.split(" ")[1:]))
        dirs[key.strip().lower()] = val.strip().lower()
        i += 1
    return dirs, "\n".join(lines[i:]).strip("\n")


def _falsy(v:str)->bool: return v in ("false", "0", "no")


def prepare(nb, text_only:bool=True):
    "A copy of notebook `nb` with hidden cells and directive lines removed; `text_only` keeps only text outputs."
    import copy
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "raw": continue
        if cell.cell_type == "markdown":
            dirs, src = parse_directives(cell.source)
            if "hide" in dirs or _falsy(dirs.get("include", "")): continue
            cell.source = src
            if src.strip(): cells.append(cell)
            continue
        dirs, src = parse_directives(cell.source)
        if "hide" in dirs or "exporti" in dirs or _falsy(dirs.get("include", "")): continue
        cell.source = "" if _falsy(dirs.get("echo", "")) else src
        outs = [] if _falsy(dirs.get("output", "")) else cell.get("outputs", [])
        kept = []
        for o in outs:
            if o.output_type == "stream":
                if o.name == "stdout" or not text_only: kept.append(o)
            elif o.output_type in ("execute_result", "display_data"):
                if text_only:  # an image's text fallback ("<Figure size ...>") says nothing: drop both
                    data = {} if any(k.startswith("image/") for k in o.data) else {k: o.data[k] for k in _KEEP_MIME if k in o.data}
                    if "text/markdown" in data: data.pop("text/plain", None)
                else:  # widgets need live kernel state that a static page doesn't have: keep their text form
                    data = {k: v for k, v in o.data.items() if not k.startswith("application/vnd.jupyter.widget")}
                if data: o.data = data; o.metadata = {} if text_only else o.get("metadata", {}); kept.append(o)
            elif o.output_type == "error": kept.append(o)
        cell.outputs = kept
        if cell.source.strip() or kept: cells.append(cell)
    nb.cells = cells
    return nb


def render(nb_path:Path=ROOT/"nbs"/"index.ipynb")->str:
    "The README Markdown for the notebook at `nb_path`."
    import nbformat
    from nbconvert import MarkdownExporter
    nb = prepare(nbformat.read(str(nb_path), as_version=4))
    nb.metadata.setdefault("language_info", {})["name"] = "python"
    exp = MarkdownExporter()
    exp.exclude_input_prompt = exp.exclude_output_prompt = True
    body, _ = exp.from_notebook_node(nb)
    # Drop empty code fences left by echo:false cells, trailing blanks, and runs of blank lines.
    body = re.sub(r"```python\n\n?```\n", "", body)
    body = "\n".join(l.rstrip() for l in body.splitlines())
    body = re.sub(r"\n{3,}", "\n\n", body).strip("\n") + "\n"
    # The note goes last so README's first lines stay the title, the summary and the two commands.
    return body + "\n<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n"


def execute(nb_path:Path=ROOT/"nbs"/"index.ipynb", timeout:int=600):
    "Run the notebook in place to refresh its saved outputs, skipping `#| eval: false` cells (as nbdev_test does)."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(str(nb_path), as_version=4)
    skipped = []
    for c in nb.cells:
        if c.cell_type == "code" and parse_directives(c.source)[0].get("eval") == "false":
            tags = c.metadata.setdefault("tags", [])
            if "skip-execution" not in tags: tags.append("skip-execution"); skipped.append(c)
            c.outputs, c.execution_count = [], None
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    for c in skipped:
        c.metadata["tags"].remove("skip-execution")
        if not c.metadata["tags"]: del c.metadata["tags"]
    nbformat.write(nb, str(nb_path))


def main(argv=None)->int:
    p = argparse.ArgumentParser(description="Generate README.md from nbs/index.ipynb.")
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is out of sync; write nothing")
    p.add_argument("--nb", type=Path, default=ROOT/"nbs"/"index.ipynb", help="source notebook")
    p.add_argument("--out", type=Path, default=ROOT/"README.md", help="README path")
    p.add_argument("--execute", action="store_true", help="first re-run the notebook to refresh its saved outputs")
    a = p.parse_args(argv)
    if not a.nb.exists():
        print(f"make_readme: {a.nb} not found", file=sys.stderr); return 2
    if a.execute and not a.check: execute(a.nb)
    new = render(a.nb)
    old = a.out.read_text(encoding="utf-8") if a.out.exists() else None
    if a.check:
        if old != new:
            print(f"make_readme: {a.out.name} is out of sync with {a.nb.name}: run `make readme`", file=sys.stderr)
            return 1
        return 0
    if old != new:
        a.out.write_text(new, encoding="utf-8")
        print(f"make_readme: wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
