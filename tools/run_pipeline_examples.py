#!/usr/bin/env python
"""Run each pipeline once with small parameters and save the executed notebook as its page on the docs site.

    OMP_NUM_THREADS=1 python tools/run_pipeline_examples.py               # all four (~10 min on a loaded 2-core box)
    OMP_NUM_THREADS=1 python tools/run_pipeline_examples.py local dpo     # some of them

Each pipeline runs through `finetune_nb.cli.run_pipeline` (papermill, exactly what `finetune-nb run` does) on the embedded
tiny model, offline, with the parameters in `EXAMPLES`. The `openai` and `migrate` pipelines talk to a finetune_nb server
started here on 127.0.0.1 that stands in for api.openai.com (the same API): the openai pipeline fine-tunes `finetune-nb/tiny`
on it, and the migrate pipeline moves that job to a local run (so asking for `migrate` runs `openai` too).

The executed notebook is written to nbs/pipelines/examples/<pipeline>.ipynb with the temporary run folder shown as `runs`
and the server as `http://127.0.0.1:8000/v1`, a note under its title naming the command, and nbdev_clean applied.
tools/build_docs.py shows it on the pipeline's page instead of the clean source (nbs/pipelines/*.ipynb, which
tools/sync_pipelines.py ships in the package; this folder is not shipped: sync_pipelines and build_docs glob only
nbs/pipelines/*.ipynb, and the copies keep the `skip_exec` front matter, so nbdev_test skips them)."""
from __future__ import annotations
import argparse, base64, json, os, re, secrets, shutil, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT/"nbs"/"pipelines"/"examples"
SHOWN_URL = "http://127.0.0.1:8000/v1"   # how the in-process server's URL reads on the page (its real port is random)

# Small enough to run in minutes on 2 CPU cores, large enough that the plots and the base vs fine-tuned numbers mean something.
EXAMPLES = {
    "local": dict(n_test=20, eval_limit=20, seed=0),   # the triage recipe: 400 examples, one epoch of LoRA
    "dpo": dict(n_train=160, n_test=12, sft_steps=20, steps=20, logging_steps=2, eval_limit=12, seed=0, report_to="none"),
    "openai": dict(base_url="<server>", model="finetune-nb/tiny", n_train=400, n_test=12, n_epochs=3, suffix="triage",
                   poll_interval=1.0, eval_limit=12, max_new_tokens=48, concurrency=4, seed=0),
    "migrate": dict(job_id="<the openai example's job>", source_base_url="<server>", eval_limit=12, max_tokens=48),
}
NB_NAMES = {"local": "finetune_local.ipynb", "dpo": "finetune_dpo.ipynb", "openai": "finetune_openai.ipynb", "migrate": "migrate.ipynb"}


def cli_command(pipeline:str, params:dict)->str:
    "The `finetune-nb run` line that runs `pipeline` with `params` (as shown on the page)."
    def val(v):   # the CLI reads a value as JSON, else as a string
        if isinstance(v, str): return v if v and " " not in v else f"'{v}'"
        return json.dumps(v) if isinstance(v, (int, float)) else f"'{json.dumps(v)}'"
    return f"finetune-nb run {pipeline} " + " ".join(f"-p {k} {val(v)}" for k, v in params.items())


def _scrub(o, subs:list[tuple[str, str]]):
    "Replace run-specific strings (temporary folders, the server's port) in every string of a notebook's JSON."
    if isinstance(o, str):
        for a, b in subs: o = o.replace(a, b)
        return o
    if isinstance(o, list): return [_scrub(x, subs) for x in o]
    if isinstance(o, dict): return {k: _scrub(v, subs) for k, v in o.items()}
    return o


def is_noise(o)->bool:
    "Stderr (library warnings) and progress bars: tqdm's widgets (a static page shows them at 0%) and transformers' HTML ones."
    data = o.get("data", {})
    return ((o.get("output_type") == "stream" and o.get("name") == "stderr") or "application/vnd.jupyter.widget-view+json" in data
            or "<progress" in data.get("text/html", ""))

def drop_noise(nb):
    for c in nb.cells:
        if c.cell_type == "code": c.outputs = [o for o in c.outputs if not is_noise(o)]
    return nb


_MD_IMG = re.compile(r"!\[([^\]]*)\]\((?![a-z]+:)([^)\s]+\.png)\)")

def inline_images(nb, run_dir:Path):
    "A displayed report's `![](eval/bars.png)` read from the run folder into the page as a `data:` URI (the site has no run folder)."
    def sub(m):
        hits = sorted(run_dir.rglob(m[2]), key=lambda p: len(p.parts))
        return f"![{m[1]}](data:image/png;base64,{base64.b64encode(hits[0].read_bytes()).decode()})" if hits else ""
    for c in nb.cells:
        for o in c.get("outputs", []):
            if "text/markdown" in o.get("data", {}): o["data"]["text/markdown"] = _MD_IMG.sub(sub, o["data"]["text/markdown"])
    return nb


def save_example(pipeline:str, run_dir:Path, shown:dict, subs:list[tuple[str, str]], note:str=""):
    "Copy the executed notebook to nbs/pipelines/examples/, scrubbed, with a note under the title, and nbdev_clean it."
    import nbformat
    nb_name = NB_NAMES[pipeline]
    raw = json.loads((run_dir/nb_name).read_text(encoding="utf-8"))
    nb = inline_images(drop_noise(nbformat.reads(json.dumps(_scrub(raw, subs)), as_version=4)), run_dir)
    first_md = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown")
    nb.cells.insert(first_md + 1, nbformat.v4.new_markdown_cell(
        "**An example run.** This page is the pipeline as executed by `tools/run_pipeline_examples.py` on the embedded tiny model "
        f"(CPU, offline), with small parameters:\n\n```bash\n{cli_command(pipeline, shown)}\n```\n\n"
        + (f"{note}\n\n" if note else "")
        + f"The clean notebook (what `finetune-nb run {pipeline}` executes) is `nbs/pipelines/{nb_name}`; every run saves its own "
          f"executed copy as `runs/<name>/{nb_name}`."))
    OUT.mkdir(parents=True, exist_ok=True)
    dest = OUT/nb_name
    nbformat.write(nb, str(dest))
    from nbdev.clean import nbdev_clean
    nbdev_clean(fname=str(dest))
    print(f"wrote {dest.relative_to(ROOT)}")
    return dest


def main(argv=None)->int:
    ap = argparse.ArgumentParser(description="Run the pipelines with small parameters and save them as docs pages.")
    ap.add_argument("pipelines", nargs="*", default=list(EXAMPLES), help=f"some of {list(EXAMPLES)} (default: all)")
    a = ap.parse_args(argv)
    bad = set(a.pipelines) - set(EXAMPLES)
    if bad: ap.error(f"unknown pipelines {sorted(bad)}; choose from {list(EXAMPLES)}")
    todo = [p for p in EXAMPLES if p in a.pipelines or (p == "openai" and "migrate" in a.pipelines)]
    os.environ.setdefault("OMP_NUM_THREADS", "1"); os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from finetune_nb.cli import run_pipeline
    tmp = Path(tempfile.mkdtemp(prefix="fnb-examples-"))
    runs, subs = tmp/"runs", [(str(tmp/"runs"), "runs"), (str(tmp), "."), (str(ROOT), "."), (str(Path.home()), "~")]
    server = None
    try:
        if {"openai", "migrate"} & set(todo):
            from finetune_nb.serve import create_app, ServerThread
            key = secrets.token_urlsafe(16)
            os.environ["OPENAI_API_KEY"] = key   # the kernels' OpenAI client reads it; it is never a parameter, so never on the page
            server = ServerThread(create_app(tmp/"server", api_keys=[key])).start()
            subs.insert(0, (server.base_url, SHOWN_URL))
            print(f"a finetune_nb server stands in for OpenAI at {server.base_url}")
        job_id = None
        for p in todo:
            shown = dict(EXAMPLES[p])
            params = {k: (server.base_url if v == "<server>" else v) for k, v in shown.items()}
            shown = {k: (SHOWN_URL if v == "<server>" else v) for k, v in shown.items()}
            if p == "migrate": params["job_id"] = shown["job_id"] = job_id
            t0 = time.time()
            print(f"== {p}: {cli_command(p, shown)}", flush=True)
            run_dir = run_pipeline(p, params, name=p, runs_dir=runs, progress=True)
            print(f"== {p}: done in {time.time() - t0:.0f}s", flush=True)
            note = ""
            if p == "openai":
                job_id = json.loads((run_dir/"metrics.json").read_text())["job"]["id"]
                note = (f"`{SHOWN_URL}` was a finetune_nb server (`finetune-nb serve`) standing in for api.openai.com, so the "
                        "fine-tuning job trained `finetune-nb/tiny` locally; against OpenAI, leave `base_url` out and set `OPENAI_API_KEY`.")
            if p == "migrate":
                note = (f"The source job `{job_id}` is the one the OpenAI pipeline's example run created on a finetune_nb server "
                        f"standing in for api.openai.com (`{SHOWN_URL}`).")
            if p in a.pipelines: save_example(p, run_dir, shown, subs, note)
    finally:
        if server: server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
