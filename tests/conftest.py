"Shared test set-up. Per-area fixtures live in `tests/fixtures_*.py` and are loaded here automatically."
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# One data dir for the whole test session (and the servers/papermill runs it starts), kept between
# local runs so the tiny model is built once; a fresh clone builds it afresh.
os.environ.setdefault("FINETUNE_NB_DATA_DIR", str(ROOT/".cache"/"test-data"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread per process (servers and kernels inherit it): the suite runs two workers plus the servers,
# kernels and subprocesses they start on 2 cores, where torch's default (a thread per core, spinning) oversubscribes.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

pytest_plugins = sorted(p.stem for p in Path(__file__).parent.glob("fixtures_*.py"))


# ---- a fresh clone: the tiny model builds in the background while tests that don't need it run -------------------
# Building finetune-nb/tiny takes ~1.5 min on one core. Inline, the first test that needs it builds it and the other
# worker, once it needs it too, waits on the build's lock with its core idle. So the session's first process starts
# the build at once (its own process, the same locked, atomic `ensure_tiny` every test calls), and the files that
# never load it run first. A failed build is not hidden: the tests that need the model then build it themselves.
NO_TINY_MODEL = ("test_docs.py", "test_evaluate.py", "test_tracking.py", "test_data.py", "test_data_formats.py", "test_dpo.py",
                 "test_augment.py", "test_widgets.py", "test_module_graph.py")

def pytest_configure(config):
    if hasattr(config, "workerinput"): return   # an xdist worker: the controller does this once
    from finetune_nb.tiny import TINY_MODEL, tiny_model_dir
    if (tiny_model_dir(TINY_MODEL)/"finetune_nb_tiny.json").exists(): return
    import subprocess, sys
    log = Path(os.environ["FINETUNE_NB_DATA_DIR"])/"tiny-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    config._tiny_build = subprocess.Popen([sys.executable, "-c", "from finetune_nb.tiny import ensure_tiny; ensure_tiny(progress=False)"],
                                          stdout=log.open("wb"), stderr=subprocess.STDOUT)

def pytest_unconfigure(config):
    if (p := getattr(config, "_tiny_build", None)) is not None: p.wait()   # the cache it fills serves the next run too

# Then the longest files first (seconds in a full run), so the suite does not end on one worker with the other idle.
LONGEST_FIRST = ("test_docs.py", "test_tracking.py", "test_serve_ray.py", "test_serve_security.py", "test_serve_flow.py", "test_lora.py", "test_pipelines.py", "test_serve.py",
                 "test_migrate.py", "test_tools.py", "test_simple_api.py", "test_migrate_all.py", "test_guide.py", "test_serve_dpo.py")

def _order(item)->tuple:
    name = Path(str(item.path)).name
    return (name not in NO_TINY_MODEL, LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST))

def pytest_collection_modifyitems(config, items):
    items.sort(key=_order)   # stable: each file keeps its own order
