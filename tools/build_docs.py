#!/usr/bin/env python
"""Build the docs site (mkdocs-material + mkdocs-jupyter) from the notebooks, offline.

    python tools/build_docs.py              # → site/ (open site/index.html as a file, or through any static server)
    python tools/build_docs.py --serve      # build, then serve on http://127.0.0.1:8000

Steps: discover the notebooks (nbs/index.ipynb, every numbered module notebook, nbs/pipelines/*), copy each
into _docs/src/ with nbdev's hidden cells and directive lines removed (saved outputs kept, so plots show; a pipeline's page
is its executed example run from nbs/pipelines/examples/ when tools/run_pipeline_examples.py has written one),
write one API-reference page per exported module from its docstrings and docments, generate
_docs/mkdocs.yml with the navigation, and run `mkdocs build`. A new notebook joins the site by existing.
Nothing is fetched from the network: theme fonts are off, MathJax is not loaded, remote images are dropped.
"""
from __future__ import annotations
import argparse, ast, json, os, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/"tools"))
from make_readme import prepare, parse_directives  # noqa: E402

NBS, WORK, SITE = ROOT/"nbs", ROOT/"_docs", ROOT/"site"
SRC = WORK/"src"
_LOCAL_PAGE_LINK = re.compile(r"\]\((?![a-z]+:)([^)#\s]+)\.(?:ipynb|md)(#[^)\s]*)?\)")   # ](page.ipynb) / ](../x.md#a): another page of the site
_OUTPUT_FILE_IMG = re.compile(r"!\[[^\]]*\]\((?![a-z]+:)[^)\s]*\)")   # ![](eval/bars.png) in an output: a run folder's file
_OUTPUT_FILE_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\((?![a-z]+:|#)[^)\s]*\)")   # [text](relative/file) in an output
_REMOTE_IMG = re.compile(r"\[!\[[^\]]*\]\(https?://[^)]*\)\]\([^)]*\)|!\[[^\]]*\]\(https?://[^)]*\)")


HOWTO_ORDER = ("formats", "qlora_gpu", "serving", "migration", "scaling_out")   # the how-to pages' order; others follow by name

def discover(nbs:Path=NBS)->dict[str, list[Path]]:
    "The notebooks that make the site: home, tutorials (in their numbered order), module chapters (numbered), pipelines."
    chapters = sorted(p for p in nbs.glob("*.ipynb") if re.match(r"\d", p.name))
    pipelines = sorted((nbs/"pipelines").glob("*.ipynb")) if (nbs/"pipelines").is_dir() else []
    tutorials = sorted((nbs/"tutorials").glob("[0-9]*.ipynb")) if (nbs/"tutorials").is_dir() else []
    howto = sorted((nbs/"howto").glob("*.md"), key=lambda p: (HOWTO_ORDER.index(p.stem) if p.stem in HOWTO_ORDER else len(HOWTO_ORDER), p.stem)) if (nbs/"howto").is_dir() else []
    return {"home": [nbs/"index.ipynb"] if (nbs/"index.ipynb").exists() else [], "tutorials": tutorials, "howto": howto, "chapters": chapters, "pipelines": pipelines}


def example_run(pipeline:Path)->Path|None:
    "The executed copy of a pipeline notebook that its docs page shows (`nbs/pipelines/examples/<name>`), if there is one."
    p = pipeline.parent/"examples"/pipeline.name
    return p if p.exists() else None


def nb_info(path:Path)->dict:
    "Title (first `# ` heading) and exported module (`#| default_exp`) of a notebook."
    import nbformat
    nb = nbformat.read(str(path), as_version=4)
    title, module = None, None
    for c in nb.cells:
        if c.cell_type == "code" and module is None:
            dirs, _ = parse_directives(c.source)
            if "default_exp" in dirs: module = dirs["default_exp"].strip()
        if c.cell_type == "markdown" and title is None:
            m = re.search(r"^#\s+(.+)$", c.source, re.M)
            if m: title = m.group(1).strip()
    return {"title": title or path.stem, "module": module, "nb": nb}


_CHECK_LINE = re.compile(r"(test_\w+\(|assert\b)")

def is_check(cell)->bool:
    "A cell that only tests (no output, no definition, some top-level `test_*(`/`assert`): a reader skips it."
    if cell.cell_type != "code" or cell.get("outputs"): return False
    top = [l for l in cell.source.splitlines() if l and not l[0].isspace()]
    return not any(l.startswith(("def ", "class ", "async def ", "@")) for l in top) and any(_CHECK_LINE.match(l) for l in top)

def _checks_last(cells:list)->list:
    "The narrative first; the test cells after it, under a heading of their own."
    import nbformat
    checks = [c for c in cells if is_check(c)]
    if not checks: return cells
    head = nbformat.v4.new_markdown_cell(f"## Checks\n\nThis chapter's {len(checks)} test cells (run by `nbdev_test`), moved below the narrative.")
    return [c for c in cells if not is_check(c)] + [head] + checks

def copy_notebook(nb, dest:Path, home:bool=False, checks_last:bool=False):
    "Write `nb` for the site: hidden cells and directives gone, remote images dropped, no widget state (the home page's `nbs/` links made site-relative)."
    import nbformat
    nb = prepare(nb, text_only=False)
    for c in nb.cells:
        if c.cell_type == "markdown": c.source = _REMOTE_IMG.sub("", c.source).strip()
        if home and c.cell_type == "markdown": c.source = c.source.replace("](nbs/", "](")   # README links point into nbs/; the site is nbs/
        if c.cell_type == "markdown": c.source = _LOCAL_PAGE_LINK.sub(lambda m: f"]({m[1]}.html{m[2] or ''})", c.source)   # nbconvert leaves links as written
        for o in c.get("outputs", []):   # a displayed report's links and images point into a run folder the site doesn't have: keep the link text
            if "text/markdown" in o.get("data", {}): o["data"]["text/markdown"] = _OUTPUT_FILE_LINK.sub(r"\1", _OUTPUT_FILE_IMG.sub("", o["data"]["text/markdown"]))
    if checks_last: nb.cells = _checks_last(nb.cells)
    nb.metadata.pop("widgets", None)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    nb.metadata.setdefault("language_info", {"name": "python"})
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(dest))


# ---- API reference -------------------------------------------------------------------------------------
# Read statically from the exported module's source (ast), not by importing it: fast (no torch import),
# deterministic, works while a module is broken mid-edit, and shows the docments exactly as written.

def _header_src(lines:list[str], node)->str:
    "Source of a def/class header: decorators and signature lines up to the body (docments included)."
    first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
    body0 = node.body[0]
    end = body0.lineno - 1 if body0.lineno > node.lineno else node.lineno
    src = "\n".join(lines[first-1:end])
    if body0.lineno == node.lineno:  # one-line def: cut the body off after the colon
        src = src[:src.rfind(":", 0, len(src) - len(lines[node.lineno-1]) + body0.col_offset) + 1] or src
    import textwrap
    return textwrap.dedent(src).rstrip()


def _code(src:str)->str: return f"```python\n{src}\n```\n"


def _doc(node)->str:
    d = ast.get_docstring(node)
    return f"\n{d.strip()}\n" if d else ""


def _is_field(n)->bool: return isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)


def _class_md(name:str, node, lines:list[str])->list[str]:
    out = [_code(_header_src(lines, node)) + _doc(node)]
    fields = [n for n in node.body if _is_field(n)]
    if fields: out.append(_code("\n".join(lines[n.lineno-1].strip() for n in fields)))
    for n in node.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n.name == "__init__" or not n.name.startswith("_")):
            title = name if n.name == "__init__" else f"{name}.{n.name}"
            out.append(f"### {title}\n\n" + _code(_header_src(lines, n)) + _doc(n))
    return out


def api_page(module:str, lib:Path=ROOT/"finetune_nb")->str:
    "Markdown API reference for `finetune_nb.<module>`: each public name's signature with docments, and docstring."
    full, path = f"finetune_nb.{module}", lib/(module.replace(".", "/") + ".py")
    out = [f"# `{full}`\n"]
    try:
        src = path.read_text(encoding="utf-8"); tree = ast.parse(src)
    except (OSError, SyntaxError) as e:
        print(f"build_docs: warning: cannot read {path}: {type(e).__name__}: {e}", file=sys.stderr)
        return out[0] + f"\n*The module's source could not be read when the site was built ({type(e).__name__}).*\n"
    lines = src.splitlines()
    if (d := ast.get_docstring(tree)): out.append(d.strip() + "\n")
    defs, names = {}, []
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): defs[n.name] = n
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                if isinstance(t, ast.Name):
                    defs.setdefault(t.id, n)
                    if t.id == "__all__":
                        try: names = list(ast.literal_eval(n.value))
                        except ValueError: pass
    for name in names:
        n = defs.get(name)
        if n is None: continue
        out.append(f"## {name}\n")
        if isinstance(n, ast.ClassDef): out += _class_md(name, n, lines)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)): out.append(_code(_header_src(lines, n)) + _doc(n))
        else:
            seg = "\n".join(lines[n.lineno-1:n.end_lineno])
            out.append(_code(seg if len(seg) < 600 else seg[:600] + " ..."))
    return "\n".join(out)


# ---- config and build ----------------------------------------------------------------------------------

def _yaml(s:str)->str: return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def write_site_sources()->dict:
    "Copy notebooks and write API pages and mkdocs.yml under _docs/; returns the nav structure."
    if SRC.exists(): shutil.rmtree(SRC)
    SRC.mkdir(parents=True)
    found, nav = discover(), {"home": None, "tutorials": [], "howto": [], "chapters": [], "pipelines": [], "api": []}
    for p in found["home"]:
        copy_notebook(nb_info(p)["nb"], SRC/"index.ipynb", home=True); nav["home"] = "index.ipynb"
    for p in found["tutorials"]:
        info = nb_info(p)
        copy_notebook(info["nb"], SRC/"tutorials"/p.name)
        nav["tutorials"].append((info["title"], f"tutorials/{p.name}"))
    if (NBS/"getting_started.md").exists():   # install (pip / Colab / clone), the demo, where outputs go
        shutil.copyfile(NBS/"getting_started.md", SRC/"getting_started.md"); nav["start"] = "getting_started.md"
    for p in found["howto"]:   # markdown pages: title from the first heading
        (SRC/"howto").mkdir(exist_ok=True); shutil.copyfile(p, SRC/"howto"/p.name)
        m = re.search(r"^#\s+(.+)$", p.read_text(encoding="utf-8"), re.M)
        nav["howto"].append((m[1].strip() if m else p.stem, f"howto/{p.name}"))
    for p in found["chapters"]:
        info = nb_info(p)
        copy_notebook(info["nb"], SRC/p.name, checks_last=True)
        nav["chapters"].append((info["title"], p.name))
        if info["module"]:
            (SRC/"api").mkdir(exist_ok=True)
            (SRC/"api"/f"{info['module']}.md").write_text(api_page(info["module"]), encoding="utf-8")
            nav["api"].append((info["module"], f"api/{info['module']}.md"))
    for p in found["pipelines"]:   # the executed example run (tools/run_pipeline_examples.py) when there is one, else the clean source
        info = nb_info(example_run(p) or p)
        copy_notebook(info["nb"], SRC/"pipelines"/p.name)
        nav["pipelines"].append((info["title"], f"pipelines/{p.name}"))
    cfg = [f"site_name: {_yaml('finetune_nb')}",
           f"site_description: {_yaml('From raw examples to a deployed fine-tuned LLM, in Jupyter.')}",
           "docs_dir: src", f"site_dir: {_yaml(str(SITE))}", "use_directory_urls: false",   # page.html links: the site works opened as files too
           "theme:", "  name: material", "  font: false", "  features: [navigation.sections, navigation.top, content.code.copy]",
           "plugins:", "  - search",
           "  - mkdocs-jupyter:", "      include_source: true", "      execute: false", "      include_requirejs: false",
           "      custom_mathjax_url: \"data:text/javascript,\"",
           "markdown_extensions: [admonition, tables, toc, pymdownx.highlight, pymdownx.superfences]",
           "nav:"]
    if nav["home"]: cfg.append(f"  - Home: {nav['home']}")
    if nav.get("start"): cfg.append(f"  - Getting started: {nav['start']}")
    for sec, key in (("Tutorials", "tutorials"), ("How-to guides", "howto"), ("Chapters", "chapters"), ("Pipelines", "pipelines"), ("API reference", "api")):
        if nav[key]:
            cfg.append(f"  - {sec}:")
            cfg += [f"    - {_yaml(t)}: {_yaml(f)}" for t, f in nav[key]]
    (WORK/"mkdocs.yml").write_text("\n".join(cfg) + "\n", encoding="utf-8")
    return nav


def build(strict:bool=False)->dict:
    "Build the site into site/; returns the nav structure."
    nav = write_site_sources()
    cmd = [sys.executable, "-m", "mkdocs", "build", "--clean", "-q", "-f", str(WORK/"mkdocs.yml")] + (["--strict"] if strict else [])
    r = subprocess.run(cmd, cwd=WORK, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if r.returncode:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"build_docs: mkdocs build failed ({r.returncode})")
    return nav


def main(argv=None)->int:
    ap = argparse.ArgumentParser(description="Build the docs site from the notebooks into site/.")
    ap.add_argument("--serve", action="store_true", help="serve site/ on 127.0.0.1 after building")
    ap.add_argument("--port", type=int, default=8000, help="port for --serve")
    a = ap.parse_args(argv)
    nav = build()
    n = len(nav["chapters"]) + len(nav["pipelines"])
    print(f"build_docs: {len(nav['tutorials'])} tutorials, {n} chapters, {len(nav['api'])} API pages → {SITE}/index.html")
    if a.serve:
        import functools, http.server
        h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
        print(f"serving on http://127.0.0.1:{a.port}/ (Ctrl-C to stop)")
        http.server.ThreadingHTTPServer(("127.0.0.1", a.port), h).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
