"""Every response body of the OpenAI routes validates against the schema OpenAI's official OpenAPI spec names for it.

The spec is read from ../shared/openai-openapi/ (never copied into the repo); the test skips, saying so, without it.
A real `finetune-nb serve` process on loopback, the tiny model, raw HTTP (so nothing is filled in by an SDK).
"""
import copy, json, time
from pathlib import Path
import httpx, pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent/"shared"/"openai-openapi"/"openai_openapi_subset.json"
KEY = "sk-conformance-1234567"
HP = {"n_epochs": 1, "batch_size": 2, "max_steps": 2, "save_steps": 1, "logging_steps": 1, "max_length": 256}


def normalise(node):
    "OpenAPI 3.0 leftovers → JSON Schema 2020-12: `nullable: true` → anyOf[..., null]; boolean exclusiveMinimum/Maximum → numbers."
    if isinstance(node, list): return [normalise(x) for x in node]
    if not isinstance(node, dict): return node
    node = {k: normalise(v) for k, v in node.items()}
    for excl, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(excl) is True and bound in node: node[excl] = node.pop(bound)
        elif node.get(excl) is False: node.pop(excl)
    if node.pop("nullable", False) is True: return {"anyOf": [node, {"type": "null"}]}
    return node


@pytest.fixture(scope="module")
def spec():
    if not SPEC.exists(): pytest.skip(f"OpenAI's OpenAPI spec not found at {SPEC} (it lives in ../shared, outside the repo)")
    return json.loads(SPEC.read_text())


@pytest.fixture(scope="module")
def validate(spec):
    "validate(body, 'SchemaName'): raise with every error found, naming the schema and the path inside the body."
    from jsonschema import Draft202012Validator
    components = normalise(copy.deepcopy(spec["components"]))
    cache = {}
    def check(body, name:str):
        assert name in spec["components"]["schemas"], name
        v = cache.get(name) or cache.setdefault(name, Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": components}))
        errors = sorted(v.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{name}: " + "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}" for e in errors[:10])
        return body
    return check


def route_schema(spec, method:str, path:str, media:str="application/json")->str:
    "The component schema the spec names for a route's 200 response."
    ref = spec["paths"][path][method]["responses"]["200"]["content"][media]["schema"]["$ref"]
    return ref.rsplit("/", 1)[1]


class Client:
    "Raw HTTP to the server; every response must carry x-request-id."
    def __init__(self, url:str, key:str=KEY): self.url, self.h = url, {"Authorization": f"Bearer {key}"}
    def __call__(self, method:str, path:str, status:int=200, **kw)->httpx.Response:
        r = httpx.request(method, self.url + path, headers={**self.h, **kw.pop("headers", {})}, timeout=120, **kw)
        assert r.headers.get("x-request-id"), (method, path, r.status_code)
        assert r.status_code == status, (method, path, r.status_code, r.text[:500])
        return r


def training_jsonl(n=12)->bytes:
    from finetune_nb.demo import make_demo_data
    return "".join(json.dumps(r) + "\n" for r in make_demo_data(n_train=n, n_test=0, seed=1)[0]).encode()


def sse_chunks(text:str)->list[dict]:
    events = [l[6:] for l in text.splitlines() if l.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


def check_files(call, spec, validate):
    "Files: an empty list, upload, list, get, delete. Returns the uploaded file id."
    schema = lambda m, p: route_schema(spec, m, p)
    validate(call("GET", "/v1/files").json(), schema("get", "/files"))                      # empty: first_id/last_id still strings
    up = validate(call("POST", "/v1/files", files={"file": ("train.jsonl", training_jsonl())}, data={"purpose": "fine-tune"}).json(), schema("post", "/files"))
    tmp = validate(call("POST", "/v1/files", files={"file": ("tmp.jsonl", training_jsonl(10))}, data={"purpose": "fine-tune"}).json(), schema("post", "/files"))
    validate(call("GET", "/v1/files").json(), schema("get", "/files"))
    validate(call("GET", f"/v1/files/{up['id']}").json(), schema("get", "/files/{file_id}"))
    validate(call("DELETE", f"/v1/files/{tmp['id']}").json(), schema("delete", "/files/{file_id}"))
    return up["id"]


def check_jobs(call, spec, validate, file_id:str, base:str)->dict:
    "Fine-tuning: empty list, create, cancel, list, get, events and checkpoints (also empty), until a job succeeds."
    schema = lambda m, p: route_schema(spec, m, p)
    J = "/v1/fine_tuning/jobs"
    validate(call("GET", J).json(), schema("get", "/fine_tuning/jobs"))
    job = validate(call("POST", J, json={"model": base, "training_file": file_id, "hyperparameters": HP, "suffix": "conf"}).json(), schema("post", "/fine_tuning/jobs"))
    other = validate(call("POST", J, json={"model": base, "training_file": file_id, "method": {"type": "supervised", "supervised": {"hyperparameters": HP}}}).json(), schema("post", "/fine_tuning/jobs"))
    validate(call("POST", f"{J}/{other['id']}/cancel").json(), schema("post", "/fine_tuning/jobs/{fine_tuning_job_id}/cancel"))
    validate(call("GET", f"{J}/{other['id']}/checkpoints").json(), schema("get", "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints"))
    t0 = time.time()
    while (job := call("GET", f"{J}/{job['id']}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        validate(job, schema("get", "/fine_tuning/jobs/{fine_tuning_job_id}"))
        assert time.time() - t0 < 300, job
        time.sleep(0.5)
    assert job["status"] == "succeeded", job
    validate(job, schema("get", "/fine_tuning/jobs/{fine_tuning_job_id}"))
    validate(call("GET", J, params={"limit": 1}).json(), schema("get", "/fine_tuning/jobs"))
    events = validate(call("GET", f"{J}/{job['id']}/events", params={"limit": 100}).json(), schema("get", "/fine_tuning/jobs/{fine_tuning_job_id}/events"))
    assert any(e["type"] == "metrics" for e in events["data"])
    cks = validate(call("GET", f"{J}/{job['id']}/checkpoints").json(), schema("get", "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints"))
    assert cks["data"] and all("valid_loss" not in c["metrics"] for c in cks["data"])   # no validation file: no valid_loss at all
    return job


def check_models_and_chat(call, spec, validate, base:str, ft_model:str):
    "Models (list, get, delete) and chat completions, plain and every streamed chunk."
    schema = lambda m, p, media="application/json": route_schema(spec, m, p, media)
    listed = validate(call("GET", "/v1/models").json(), schema("get", "/models"))
    assert {base, ft_model} <= {m["id"] for m in listed["data"]}
    validate(call("GET", f"/v1/models/{base}").json(), schema("get", "/models/{model}"))
    validate(call("GET", f"/v1/models/{ft_model}").json(), schema("get", "/models/{model}"))
    body = {"model": ft_model, "messages": [{"role": "developer", "content": "Reply in JSON."}, {"role": "user", "content": "charged twice"}], "max_tokens": 6, "temperature": 0}
    validate(call("POST", "/v1/chat/completions", json=body).json(), schema("post", "/chat/completions"))
    chunks = sse_chunks(call("POST", "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}).text)
    for c in chunks: validate(c, schema("post", "/chat/completions", "text/event-stream"))
    assert chunks[-1]["usage"]["completion_tokens"] >= 1 and all("usage" not in c for c in chunks[:-1])
    validate(call("DELETE", f"/v1/models/{ft_model}").json(), schema("delete", "/models/{model}"))


def check_errors(call, url, validate, file_id:str, base:str):
    "Error bodies: 401, 404, 400 (bad JSON, bad field, over the spec's hyperparameter limits), 405."
    J = "/v1/fine_tuning/jobs"
    bad = [Client(url, "sk-wrong-key-000000")("GET", "/v1/models", 401),
           call("GET", "/v1/files/file-" + "0" * 24, 404), call("GET", f"{J}/ftjob-" + "0" * 24, 404),
           call("POST", "/v1/chat/completions", 404, json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}),
           call("POST", "/v1/chat/completions", 400, content=b"{not json", headers={"Content-Type": "application/json"}),
           call("POST", "/v1/chat/completions", 400, json={"model": base, "messages": []}),
           call("POST", J, 400, json={"model": base, "training_file": file_id, "hyperparameters": {"n_epochs": 51}}),
           call("POST", J, 400, json={"model": base, "training_file": file_id, "hyperparameters": {"batch_size": 257}}),
           call("DELETE", "/v1/files", 405)]
    for r in bad: validate(r.json(), "ErrorResponse")
    assert [r.json()["error"]["param"] for r in bad[6:8]] == ["hyperparameters.n_epochs", "hyperparameters.batch_size"]


def test_responses_conform_to_openai_spec(spec, validate, start_server):
    srv = start_server("conformance", api_keys=KEY)
    call = Client(srv.url)
    base = srv.base_model
    file_id = check_files(call, spec, validate)
    job = check_jobs(call, spec, validate, file_id, base)
    check_models_and_chat(call, spec, validate, base, job["fine_tuned_model"])
    check_errors(call, srv.url, validate, file_id, base)


def test_normalise():
    "The normalisation is what the spec's README says: nullable → anyOf null, boolean exclusiveMinimum → a number."
    assert normalise({"type": "object", "nullable": True}) == {"anyOf": [{"type": "object"}, {"type": "null"}]}
    assert normalise({"type": "number", "minimum": 0, "exclusiveMinimum": True}) == {"type": "number", "exclusiveMinimum": 0}
    from jsonschema import Draft202012Validator
    v = Draft202012Validator(normalise({"type": "number", "minimum": 0, "exclusiveMinimum": True, "nullable": True}))
    assert v.is_valid(None) and v.is_valid(0.5) and not v.is_valid(0) and not v.is_valid("x")
