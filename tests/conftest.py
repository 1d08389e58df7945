"Shared test set-up. Per-area fixtures live in `tests/fixtures_*.py` and are loaded here automatically."
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# One data dir for the whole test session (and the servers/papermill runs it starts), kept between
# local runs so the tiny model is built once; a fresh clone builds it afresh.
os.environ.setdefault("FINETUNE_NB_DATA_DIR", str(ROOT/".cache"/"test-data"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

pytest_plugins = sorted(p.stem for p in Path(__file__).parent.glob("fixtures_*.py"))
