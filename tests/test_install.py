"""Installs anywhere: the pipelines ship inside the package, the runtime requirements are what the library imports (the notebook
toolchain is in the `dev`/`docs` extras), and a wheel installed into a fresh venv runs `finetune-nb demo` from any directory."""
import json, os, re, subprocess, sys, time, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLCHAIN = {"jupyterlab", "nbdev", "execnb", "ghapi", "mkdocs-material", "mkdocs-jupyter", "jupytext", "nbconvert", "pytest"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory)->Path:
    "A wheel of this checkout (no dependencies; setuptools from the build venv, no network)."
    d = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(d), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (w,) = d.glob("finetune_nb-*.whl")
    return w


def _requires(meta:str)->dict:
    "Requirement name -> extra ('' for runtime) from a wheel's METADATA."
    out = {}
    for l in meta.splitlines():
        if not l.startswith("Requires-Dist:"): continue
        name = re.split(r"[ ;<>=!\[~]", l.split(":", 1)[1].strip())[0].lower()
        m = re.search(r'extra == "(\w+)"', l)
        out.setdefault(m[1] if m else "", set()).add(name)
    return out


def test_wheel_ships_pipelines_and_light_requirements(wheel):
    z = zipfile.ZipFile(wheel)
    names = set(z.namelist())
    for nb in ("finetune_local.ipynb", "finetune_openai.ipynb", "finetune_dpo.ipynb", "migrate.ipynb"):
        assert f"finetune_nb/pipelines/{nb}" in names, nb
    assert not [n for n in names if "examples/" in n or n.startswith("nbs/")]   # the docs' executed example runs are not shipped
    meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    req = _requires(meta)
    assert not (req[""] & TOOLCHAIN), req[""] & TOOLCHAIN               # the notebook toolchain is not a runtime requirement
    assert {"papermill", "nbformat", "ipykernel", "torch", "fastcore"} <= req[""]   # what `finetune-nb run` and the library import
    assert {"nbdev", "jupyterlab", "pytest"} <= req["dev"] and {"mkdocs-material", "mkdocs-jupyter"} <= req["docs"]


def test_runtime_requirements_cover_library_imports():
    "Every third-party module the library imports at module or function level is a runtime requirement (or comes with one)."
    import importlib.metadata as md
    mods = set()
    for f in (ROOT/"finetune_nb").rglob("*.py"):
        mods |= set(re.findall(r"^\s*(?:from|import) ([a-zA-Z_]\w*)", f.read_text(), re.M))
    stdlib = set(sys.stdlib_module_names) | {"finetune_nb", "__future__"}
    dists = md.packages_distributions()
    runtime = {r.split(";")[0].strip() for r in md.requires("finetune_nb") if "extra ==" not in r}
    runtime = {re.split(r"[ <>=!\[~]", r)[0].lower().replace("_", "-") for r in runtime}
    closure, todo = set(), list(runtime)               # runtime requirements and everything they pull in
    while todo:
        n = todo.pop()
        if n in closure: continue
        closure.add(n)
        try: todo += [re.split(r"[ ;<>=!\[~(]", r)[0].lower().replace("_", "-") for r in (md.requires(n) or []) if "extra ==" not in r]
        except md.PackageNotFoundError: pass
    optional = {"pandas",   # `MetricsTable.to_pandas` only: imported when asked for
                "wandb", "trackio",   # trackers, imported only when a run asks for them (they are the user's to install)
                "conversion"}         # llama.cpp's converter package, run from llama-cpp-python's files ([gguf]) in a subprocess
    extras = {re.split(r"[ ;<>=!\[~]", r)[0].lower().replace("_", "-") for r in md.requires("finetune_nb")
              if any(f'extra == "{e}"' in r for e in ("tracking", "ray", "gguf", "vllm"))}   # imported lazily, behind a clear error
    optional |= {m for m in mods if {d.lower().replace("_", "-") for d in dists.get(m, [m])} & extras}
    missing = {m for m in mods - stdlib - optional if not {d.lower().replace("_", "-") for d in dists.get(m, [m])} & closure}
    assert not missing, missing


def test_package_copies_match_the_pipeline_notebooks():
    r = subprocess.run([sys.executable, str(ROOT/"tools"/"sync_pipelines.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from finetune_nb.cli import pipeline_path, PIPELINES_DIR
    assert pipeline_path("local") == PIPELINES_DIR/"finetune_local.ipynb" and PIPELINES_DIR.parent.name == "finetune_nb"


@pytest.mark.slow   # a fresh venv (torch + the runtime set: 3-10 min) and the demo (3-12 min on 2 cores), so past pytest.ini's 900 s
@pytest.mark.timeout(3600)
def test_wheel_in_fresh_venv_runs_demo(wheel, tmp_path):
    venv = tmp_path/"venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, env = venv/"bin"/"python", {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_NB_")}
    env["FINETUNE_NB_DATA_DIR"] = str(tmp_path/"data")
    for args in (["torch==2.13.0"], [str(wheel)]):   # torch pinned first (from the local wheel dir pip already uses)
        t = time.time()
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *args], capture_output=True, text=True, env=env, timeout=1800)
        assert r.returncode == 0, r.stderr[-3000:]
        print(f"pip install {args[0]}: {time.time() - t:.0f}s")
    work = tmp_path/"elsewhere"; work.mkdir()
    t = time.time()
    r = subprocess.run([str(venv/"bin"/"finetune-nb"), "demo", "--eval-examples", "20"], cwd=work, capture_output=True, text=True,
                       env=env, timeout=3000)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    print(f"finetune-nb demo --eval-examples 20: {time.time() - t:.0f}s\n" + r.stdout[-1500:])
    run_dir = tmp_path/"data"/"runs"/"demo"                    # the one home of runs: <data dir>/runs
    assert (run_dir/"report.md").read_text().startswith("#") and f"report:  {run_dir/'report.md'}" in r.stdout
    assert f"run folder: {run_dir}" in r.stdout and "cell 10/" in r.stdout   # progress named the folder and the cells
    assert json.loads((run_dir/"metrics.json").read_text())["n_test"] == 20
    assert os.listdir(work) == []                               # nothing written where the command was run
