"""The simple API (`/v1/fine-tune/*`, `/health`) in the exact shapes the guide's users call, and the operator's model map.

Real `finetune-nb serve` processes on loopback, the tiny model; the model map is driven with the official openai SDK.
"""
import json, time
import httpx, openai, pytest

HP = {"n_epochs": 1, "batch_size": 2, "max_steps": 2, "save_steps": 100, "logging_steps": 1, "max_length": 256}
MSGS = [{"role": "user", "content": "My card was charged twice"}]


def upload(srv)->str:
    from finetune_nb.demo import make_demo_data
    data = "".join(json.dumps(r) + "\n" for r in make_demo_data(n_train=12, n_test=0, seed=4)[0]).encode()
    return srv.client().files.create(file=("train.jsonl", data), purpose="fine-tune").id


def wait_simple_job(url:str, job_id:str, timeout=300)->dict:
    t0 = time.time()
    while (j := httpx.get(f"{url}/v1/fine-tune/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.time() - t0 < timeout, j
        time.sleep(0.5)
    return j


def test_simple_api_shapes_and_alias_survives_sigkill(start_server, tmp_path):
    state = tmp_path/"state"
    srv = start_server("simple", state_dir=state)
    u, base = srv.url, srv.base_model
    assert httpx.get(u + "/health").json()["status"] == "healthy"
    # POST /v1/fine-tune/jobs {training_file, base_model, suffix?, hyperparameters?} -> {job_id, status, model}
    r = httpx.post(u + "/v1/fine-tune/jobs", json={"training_file": upload(srv), "base_model": base, "suffix": "simple", "hyperparameters": HP})
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["job_id"].startswith("ftjob-") and created["status"] == "queued" and created["model"] == base
    # GET /v1/fine-tune/jobs/{job_id} -> {job_id, status, model, fine_tuned_model, trained_tokens, error}
    job = wait_simple_job(u, created["job_id"])
    assert {k: job[k] for k in ("job_id", "status", "model", "error")} == {"job_id": created["job_id"], "status": "succeeded", "model": base, "error": None}
    ft = job["fine_tuned_model"]
    assert ft == f"ft:{base}:simple:{created['job_id']}" and job["trained_tokens"] > 0
    # POST /v1/fine-tune/deploy {model_id, alias} -> {alias, model_id, status: "deployed"}
    r = httpx.post(u + "/v1/fine-tune/deploy", json={"model_id": ft, "alias": "support"})
    assert r.status_code == 200 and {k: r.json()[k] for k in ("alias", "model_id", "status")} == {"alias": "support", "model_id": ft, "status": "deployed"}
    # POST /v1/fine-tune/inference {model_alias, messages, temperature = 0.7} -> {model, response, usage: {prompt_tokens, completion_tokens}}
    r = httpx.post(u + "/v1/fine-tune/inference", json={"model_alias": "support", "messages": MSGS}, timeout=120)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["model"] == ft and isinstance(reply["response"], str)
    assert set(reply["usage"]) >= {"prompt_tokens", "completion_tokens"} and reply["usage"]["prompt_tokens"] > 0 and reply["usage"]["completion_tokens"] > 0
    r = httpx.post(u + "/v1/fine-tune/inference", json={"model_alias": "no-such-alias", "messages": MSGS})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # GET /v1/fine-tune/models -> {models: {alias: model_id}}
    assert httpx.get(u + "/v1/fine-tune/models").json()["models"] == {"support": ft}
    greedy = lambda url: httpx.post(url + "/v1/fine-tune/inference", json={"model_alias": "support", "messages": MSGS, "temperature": 0}, timeout=120).json()["response"]
    before = greedy(u)
    # SIGKILL: no shutdown hook runs; the alias and what it points to are still there after a restart
    srv.kill()
    srv2 = start_server("simple-again", state_dir=state)
    assert httpx.get(srv2.url + "/v1/fine-tune/models").json()["models"] == {"support": ft}
    assert greedy(srv2.url) == before
    assert httpx.get(f"{srv2.url}/v1/fine-tune/jobs/{created['job_id']}").json()["fine_tuned_model"] == ft


MINI, BIG = "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"

@pytest.fixture(scope="module")
def mapped(module_server):
    "One server for the bad-request and model-map tests; OpenAI's model names map to the tiny model."
    return module_server("mapped", extra_args=["--model-map", f"{MINI}=finetune-nb/tiny,{BIG}=finetune-nb/tiny"], base_model="finetune-nb/tiny")


def test_simple_api_bad_requests(mapped):
    srv = mapped
    u = srv.url
    assert httpx.post(u + "/v1/fine-tune/deploy", json={"alias": "x"}).json()["error"]["param"] == "model_id"
    assert httpx.post(u + "/v1/fine-tune/deploy", json={"alias": "x", "model_id": "ft:nope"}).status_code == 404
    assert httpx.post(u + "/v1/fine-tune/deploy", json={"alias": "ok\n", "model_id": srv.base_model}).status_code == 400
    assert httpx.post(u + "/v1/fine-tune/inference", json={"model_alias": "x"}).status_code == 400   # no messages
    assert httpx.post(u + "/v1/fine-tune/jobs", json={"base_model": srv.base_model}).status_code == 400   # no training file
    assert httpx.get(u + "/v1/fine-tune/jobs/ftjob-" + "0" * 24).status_code == 404
    # the records may also come inline (the file is uploaded for the caller)
    from finetune_nb.demo import make_demo_data
    r = httpx.post(u + "/v1/fine-tune/jobs", json={"training_data": make_demo_data(n_train=12, n_test=0, seed=4)[0], "hyperparameters": HP})
    assert r.status_code == 200 and r.json()["model"] == srv.base_model, r.text
    job = srv.client().fine_tuning.jobs.cancel(r.json()["job_id"])
    assert job.status == "cancelled" and srv.client().files.retrieve(job.training_file).filename == "training_data.jsonl"


def test_model_map_env(monkeypatch):
    from finetune_nb.serve import parse_model_map
    monkeypatch.setenv("FINETUNE_NB_MODEL_MAP", "gpt-4o-mini-2024-07-18=finetune-nb/tiny,gpt-4o-2024-08-06=finetune-nb/tiny")
    assert parse_model_map(None) == {"gpt-4o-mini-2024-07-18": "finetune-nb/tiny", "gpt-4o-2024-08-06": "finetune-nb/tiny"}
    assert parse_model_map("a=b") == {"a": "b"}   # the --model-map option wins over the environment


def test_model_map_openai_names_fine_tune_and_chat(mapped):
    "Client code that names OpenAI models runs unchanged: the operator maps the names to a local base model."
    mini, big, srv = MINI, BIG, mapped
    c = srv.client()
    assert {mini, big, "finetune-nb/tiny"} <= {m.id for m in c.models.list()}
    assert c.models.retrieve(mini).id == mini
    job = c.fine_tuning.jobs.create(model=mini, training_file=upload(srv), hyperparameters=HP, suffix="mapped")
    assert job.model == mini
    t0 = time.time()
    while (job := c.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() - t0 < 300; time.sleep(0.5)
    assert job.status == "succeeded" and job.model == mini and job.fine_tuned_model == f"ft:{mini}:mapped:{job.id}", job
    ask = lambda model: c.chat.completions.create(model=model, messages=MSGS, max_tokens=8, temperature=0)
    r = ask(big)
    assert r.model == big and r.choices[0].message.content == ask("finetune-nb/tiny").choices[0].message.content   # the mapped base answers
    assert ask(job.fine_tuned_model).model == job.fine_tuned_model
    with pytest.raises(openai.BadRequestError) as e: c.fine_tuning.jobs.create(model="gpt-3.5-turbo", training_file=job.training_file)
    assert e.value.param == "model"
