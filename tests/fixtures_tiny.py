"Fixtures of the tiny area: the embedded tiny base model, built once per data dir."
import pytest


@pytest.fixture(scope="session")
def tiny_model_path()->str:
    "Directory of the embedded `finetune-nb/tiny` model (built on first use, then cached under the data dir)."
    from finetune_nb.tiny import TINY_MODEL, resolve_model_path
    return resolve_model_path(TINY_MODEL)
