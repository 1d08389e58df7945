"Serving engines as deploy targets, without the engines: a vLLM backend's runtime adapter loading and a llama.cpp backend's sampling, against a capture server on loopback; the GGUF export's error without llama-cpp-python."
import importlib.util, json, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import httpx, pytest
from finetune_nb.serve.app import owner_of_key
from finetune_nb.serve.store import Store

SECRET = "sk-vllm-operator-key-7"
FT = "ft:tiny:eng:ftjob-" + "e" * 24


class Engine:
    "A loopback stand-in for vLLM / llama.cpp's OpenAI server: records every request; `fail` makes adapter loads answer 500."
    def __init__(self):
        self.requests, self.fail = [], False
        eng = self
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                eng.requests.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
                if self.path.endswith("_lora_adapter"):
                    status, out = (500, b'{"error": "no"}') if eng.fail else (200, b'"Success"')
                else:
                    status, out = 200, json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"engine:{body.get('model')}"}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(status); self.send_header("content-type", "application/json"); self.send_header("content-length", str(len(out)))
                self.end_headers(); self.wfile.write(out)
        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/v1"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
    def paths(self): return [r["path"] for r in self.requests]


@pytest.fixture
def engine():
    e = Engine(); yield e; e.srv.shutdown()


def test_vllm_backend_loads_adapter_at_deploy_and_unloads_at_undeploy(start_server, engine, tmp_path):
    adapter = tmp_path/"run"/"adapter"; adapter.mkdir(parents=True)
    (adapter/"adapter_config.json").write_text("{}")   # the engine loads it, not us
    state = tmp_path/"serve-a"; state.mkdir()
    Store(state/"state.db").insert("models", {"id": FT, "object": "model", "created": 1, "owned_by": "user"},
                                   owner=owner_of_key(None), internal={"base": "finetune-nb/tiny", "adapter": str(adapter), "job": None})
    backends = {"vl": {"url": engine.url, "type": "vllm", "key_env": "VL_KEY"}, "lc": {"url": engine.url, "type": "llamacpp"}}
    srv = start_server("a", state_dir=state, env={"FINETUNE_NB_BACKENDS": json.dumps(backends), "VL_KEY": SECRET})
    dep = lambda **kw: httpx.post(srv.url + "/v1/fine-tune/deploy", json=kw, timeout=60)
    undep = lambda alias: httpx.delete(srv.url + f"/v1/fine-tune/deploy/{alias}", timeout=60)
    ask = lambda model: srv.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)

    r = dep(alias="prod", model=FT, backend="vl")
    assert r.status_code == 200 and r.json()["backend"] == "vl", r.text
    assert engine.requests == [{"path": "/v1/load_lora_adapter", "auth": f"Bearer {SECRET}",
                                "body": {"lora_name": FT, "lora_path": str(adapter.resolve()), "load_inplace": True}}]
    reply = ask("prod")                                              # chat on the alias asks the engine for the adapter by name
    assert engine.requests[-1]["path"] == "/v1/chat/completions" and engine.requests[-1]["body"]["model"] == FT
    assert reply.choices[0].message.content == f"engine:{FT}"
    assert dep(alias="prod2", model=FT, backend="vl").status_code == 200
    engine.requests.clear()
    assert undep("prod").json() == {"id": "prod", "object": "alias", "deleted": True}
    assert engine.paths() == []                                      # prod2 still uses the adapter
    assert undep("prod2").status_code == 200
    assert engine.requests == [{"path": "/v1/unload_lora_adapter", "auth": f"Bearer {SECRET}", "body": {"lora_name": FT}}]
    assert undep("prod2").status_code == 404
    assert {a["alias"] for a in httpx.get(srv.url + "/v1/fine-tune/models").json()["aliases"]} == set()

    engine.requests.clear()                                          # a name the engine serves itself: nothing to load
    assert dep(alias="served", model="some-base", backend="vl").status_code == 200 and engine.requests == []
    engine.fail = True                                               # the engine refuses the adapter: 502, and no alias
    r = dep(alias="broken", model=FT, backend="vl")
    assert r.status_code == 502 and "load_lora_adapter" in r.json()["error"]["message"]
    assert "broken" not in {a["alias"] for a in httpx.get(srv.url + "/v1/fine-tune/models").json()["aliases"]}

    engine.requests.clear()                                          # llama.cpp: sampled as OpenAI does, no repeat penalty
    assert dep(alias="gg", model="m.gguf", backend="lc").status_code == 200 and engine.requests == []
    ask("gg")
    assert engine.requests[-1]["body"]["repeat_penalty"] == 1.0 and engine.requests[-1]["body"]["model"] == "m.gguf"


def test_backend_type_is_checked_at_start(start_server):
    with pytest.raises(RuntimeError, match="type must be one of"):
        start_server("bad", env={"FINETUNE_NB_BACKENDS": json.dumps({"x": {"url": "http://127.0.0.1:9/v1", "type": "tgi"}})})


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None, reason="llama-cpp-python is installed in this venv (it belongs in .venv-gguf)")
def test_export_gguf_without_llama_cpp_names_the_extra(tmp_path):
    import subprocess, sys
    from pathlib import Path
    r = subprocess.run([str(Path(sys.executable).parent/"finetune-nb"), "export", "gguf", "finetune-nb/tiny", "--out-dir", str(tmp_path/"g")], capture_output=True, text=True)
    assert r.returncode == 2 and "pip install finetune_nb[gguf]" in r.stderr, r.stderr
    assert not (tmp_path/"g").exists()                               # failed before writing anything
