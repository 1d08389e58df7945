"Fixtures for the serving area: real `finetune-nb serve` processes (uvicorn) on loopback."
import os, sys, time, signal, socket, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVE_CMD = [str(Path(sys.executable).parent/"finetune-nb"), "serve"]   # the venv's console script


def free_port()->int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


class ServerProc:
    "One `finetune-nb serve` process (the CLI, as users start it) on a free loopback port, with its own state dir."
    def __init__(self, state_dir, base_model:str, api_keys:str|None=None, extra_args=(), env=None):
        self.state_dir, self.base_model, self.api_keys = Path(state_dir), base_model, api_keys
        self.extra_args, self.env, self.proc, self.port = list(extra_args), dict(env or {}), None, None

    def start(self, timeout:float=90)->"ServerProc":
        import httpx
        self.port = free_port()
        env = {**os.environ, "FINETUNE_NB_BASE_MODELS": self.base_model, "FINETUNE_NB_LOG_LEVEL": "INFO", **self.env}
        env.pop("FINETUNE_NB_API_KEYS", None)
        if self.api_keys: env["FINETUNE_NB_API_KEYS"] = self.api_keys
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.state_dir/f"server-{self.port}.log", "wb")
        cmd = [*SERVE_CMD, "--host", "127.0.0.1", "--port", str(self.port),
               "--state-dir", str(self.state_dir), "--log-level", "warning", *self.extra_args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.time()
        while True:
            if self.proc.poll() is not None: raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200: return self
            except httpx.HTTPError: pass
            if time.time() - t0 > timeout:
                self.kill()   # not left running (and loading models) after the test gives up on it
                raise RuntimeError(f"server did not start in {timeout}s:\n{self.read_log()}")
            time.sleep(0.1)

    @property
    def url(self)->str: return f"http://127.0.0.1:{self.port}"
    @property
    def base_url(self)->str: return self.url + "/v1"

    def client(self, key:str|None=None, **kw):
        import openai
        return openai.OpenAI(base_url=self.base_url, api_key=key or (self.api_keys or "no-key").split(",")[0], max_retries=kw.pop("max_retries", 0), **kw)

    def read_log(self)->str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-5000:]

    def kill(self):
        "SIGKILL: no shutdown hooks run."
        if self.proc and self.proc.poll() is None: self.proc.send_signal(signal.SIGKILL); self.proc.wait(30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: self.kill()
        if getattr(self, "log", None): self.log.close()


@pytest.fixture(scope="session")
def serve_base_model(request)->str:
    "The base model the server tests serve: the embedded tiny model, or (until it exists) the eval area's tiny random Llama."
    try:
        from finetune_nb.tiny import TINY_MODEL, resolve_model_path
        resolve_model_path(TINY_MODEL)   # build it once, before servers start
        return TINY_MODEL
    except ImportError:
        return request.getfixturevalue("tiny_random_path")


def _server_factory(root:Path, base:str):
    "`(start, procs)`: `start(name='a', api_keys=None, extra_args=(), state_dir=None, env=None, base_model=None)` -> a started `ServerProc`."
    procs = []
    def start(name="a", api_keys=None, extra_args=(), state_dir=None, env=None, base_model=None):
        p = ServerProc(state_dir or root/f"serve-{name}", base_model or base, api_keys, extra_args, env)
        procs.append(p)   # before start: a server that doesn't come up in time is still stopped at teardown
        return p.start()
    return start, procs


@pytest.fixture
def start_server(tmp_path, serve_base_model):
    "Factory of servers for one test; all stopped at its teardown."
    start, procs = _server_factory(tmp_path, serve_base_model)
    yield start
    for p in procs: p.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory, serve_base_model):
    "Factory of servers shared by a module's tests (one process start instead of one per test); stopped after the module."
    start, procs = _server_factory(tmp_path_factory.mktemp("serve"), serve_base_model)
    yield start
    for p in procs: p.stop()


def offline_wandb_env(d:Path)->dict:
    "A server's environment for OpenAI's wandb integration offline: nothing leaves the machine, every wandb folder under `d`."
    return dict(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(d/"wandb"), WANDB_CACHE_DIR=str(d/"wandb-cache"),
                WANDB_CONFIG_DIR=str(d/"wandb-config"), WANDB_DATA_DIR=str(d/"wandb-data"))


def check_tracked_in_wandb(wandb_dir:Path, job, msgs:list, keys=("train/loss",)):
    "OpenAI's wandb integration, offline: one run, named by the job, tagged with it, in project p, and the losses (`keys`) logged into it."
    assert f"Weights & Biases run {job.id} in project p" in msgs, msgs
    runs = list(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs
    log = runs[0].read_bytes()   # wandb's own record log; its strings (names, keys) are stored as they are
    for s in (job.id, f"finetune-nb/{job.id}", "training.max_steps", job.fine_tuned_model, *keys): assert s.encode() in log, s
