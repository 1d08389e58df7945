"Fixtures for the UX area (CLI, widgets, docs, pipelines)."
import pytest


@pytest.fixture(scope="session")
def ux_base_model(request)->str:
    "A small local chat model for pipeline runs: the lora area's toy model (built in ~1 s)."
    return request.getfixturevalue("toy_model_dir")
