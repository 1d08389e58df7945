"Fixtures for the OpenAI area: a loopback fake of OpenAI's API (see `tests/fake_openai.py`)."
import sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai import FakeOpenAI  # noqa: E402


@pytest.fixture(scope="session")
def _fake_openai_server():
    "One fake server for the session; `fake_openai` resets it per test."
    with FakeOpenAI() as fake: yield fake


@pytest.fixture
def fake_openai(_fake_openai_server):
    "A started `FakeOpenAI` with fresh state and default settings; `.base_url` is 'http://127.0.0.1:PORT/v1'."
    f = _fake_openai_server
    f.latency, f.advance, f.stage_seconds, f.n_steps = 0.0, "poll", 0.05, 10
    f.file_processing_polls, f.result_base64, f.chat_reply, f.validate_training_files = 1, True, None, True
    yield f.reset()
    f.reset()


@pytest.fixture
def openai_client(fake_openai):
    "A real `openai.OpenAI` client pointed at the fake (SDK retries on, fast: the fake sends retry-after-ms)."
    import openai
    c = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test-fixture", max_retries=2)
    yield c
    c.close()
