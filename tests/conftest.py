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
