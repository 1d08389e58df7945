"The deployment server over real HTTP: auth and bad input, chat (plain, streamed, batched), aliases, external backends, schema fuzzing."
import json, time, concurrent.futures as cf
from pathlib import Path
import httpx, openai, pytest

from finetune_nb.serve import Store, create_app, owner_of_key

KEYS = "sk-serve-test-aaaaaaaa,sk-serve-test-bbbbbbbb"
KEY_A, KEY_B = KEYS.split(",")


def demo_jsonl(n=12)->bytes:
    from finetune_nb.demo import make_demo_data
    train, _ = make_demo_data(n_train=n, n_test=0, seed=3)
    return "".join(json.dumps(r) + "\n" for r in train).encode()


def err(r:httpx.Response)->dict:
    "The OpenAI-shaped error of a response (asserting the shape)."
    e = r.json()["error"]
    assert set(e) >= {"message", "type", "param", "code"} and e["message"], e
    return e


@pytest.fixture(scope="module")
def keyed(module_server):
    "One server for the auth and chat tests: two keys, a 20 kB upload limit."
    return module_server("auth", api_keys=KEYS, extra_args=["--max-upload-bytes", "20000"])


def test_auth_and_bad_input(keyed):
    srv = keyed
    u, ha, hb = srv.url, {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}
    # auth: every route but /health
    assert httpx.get(u + "/health").status_code == 200
    for path in ["/v1/models", "/v1/files", "/v1/fine_tuning/jobs", "/v1/fine-tune/models", "/metrics"]:
        r = httpx.get(u + path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), path
        assert err(r)["code"] == "invalid_api_key"
    assert httpx.get(u + "/v1/models", headers={"Authorization": "Bearer sk-wrong-key-123456"}).status_code == 401
    with pytest.raises(openai.AuthenticationError): srv.client("sk-wrong-key-123456").models.list()
    ca, cb = srv.client(KEY_A), srv.client(KEY_B)
    assert any("tiny" in m.id for m in ca.models.list())
    # malformed JSON, wrong types, missing fields -> 400
    for body in [b"{not json", b"[]", b'{"model": 3}', b'{"model": "x", "messages": []}',
                 json.dumps({"model": srv.base_model, "messages": [{"role": "tool", "content": "x"}]}).encode()]:
        r = httpx.post(u + "/v1/chat/completions", headers={**ha, "Content-Type": "application/json"}, content=body)
        assert r.status_code == 400, (body, r.text); err(r)
    r = httpx.post(u + "/v1/fine_tuning/jobs", headers={**ha, "Content-Type": "application/json"}, content=b'{"model":')
    assert r.status_code == 400 and "JSON" in err(r)["message"]
    # unknown and path-like ids -> 404, never a file read
    for bad in ["file-" + "0" * 24, "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"]:
        for path in [f"/v1/files/{bad}", f"/v1/files/{bad}/content", f"/v1/fine_tuning/jobs/{bad}", f"/v1/fine_tuning/jobs/{bad}/events"]:
            r = httpx.get(u + path, headers=ha)
            assert r.status_code == 404, (path, r.status_code, r.text[:200]); err(r)
            assert "root:" not in r.text
    with pytest.raises(openai.NotFoundError): ca.files.retrieve("../../etc/passwd")
    with pytest.raises(openai.NotFoundError): ca.fine_tuning.jobs.retrieve("ftjob-" + "a" * 24)
    with pytest.raises(openai.NotFoundError): ca.models.retrieve("ft:nope:x:ftjob-" + "a" * 24)
    with pytest.raises(openai.NotFoundError) as e: ca.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"
    # uploads: wrong purpose, too big, invalid content, then a good one
    with pytest.raises(openai.BadRequestError) as e: ca.files.create(file=("d.jsonl", demo_jsonl()), purpose="assistants")
    assert e.value.param == "purpose"
    with pytest.raises(openai.APIStatusError) as e: ca.files.create(file=("big.jsonl", b"x" * 30000), purpose="fine-tune")
    assert e.value.status_code == 413
    bad = demo_jsonl().replace(b'"role": "assistant"', b'"role": "robot"', 1) + b"{oops\n"
    with pytest.raises(openai.BadRequestError) as e: ca.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert e.value.code == "invalid_file" and "line 1" in e.value.message and "line 13" in e.value.message
    details = e.value.body["details"]
    assert {d["line"] for d in details} >= {1, 13}
    f = ca.files.create(file=("good.jsonl", demo_jsonl()), purpose="fine-tune")
    assert f.purpose == "fine-tune" and f.bytes == len(demo_jsonl()) and f.filename == "good.jsonl"
    assert ca.files.content(f.id).content == demo_jsonl()
    # per-key isolation
    with pytest.raises(openai.NotFoundError): cb.files.retrieve(f.id)
    assert [x.id for x in cb.files.list()] == [] and [x.id for x in ca.files.list()] == [f.id]
    # job creation errors
    with pytest.raises(openai.NotFoundError): ca.fine_tuning.jobs.create(model=srv.base_model, training_file="file-" + "b" * 24)
    with pytest.raises(openai.BadRequestError) as e: ca.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id)
    assert e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e: ca.fine_tuning.jobs.create(model=srv.base_model, training_file=f.id, hyperparameters={"n_epoch": 2})
    assert "n_epoch" in e.value.message
    with pytest.raises(openai.BadRequestError): ca.fine_tuning.jobs.create(model=srv.base_model, training_file=f.id, suffix="../x")
    with pytest.raises(openai.NotFoundError): cb.fine_tuning.jobs.create(model=srv.base_model, training_file=f.id)
    assert ca.files.delete(f.id).deleted and [x.id for x in ca.files.list()] == []
    # still healthy, and the counters saw it all
    assert httpx.get(u + "/health").json()["status"] == "healthy"
    m = httpx.get(u + "/metrics", headers=ha).text
    assert "finetune_nb_auth_failures" in m and 'status="404"' in m and "finetune_nb_uploads_too_large" in m
    assert KEY_A not in srv.read_log() and KEY_B not in srv.read_log()


def test_chat_stream_stop_and_batching(keyed):
    srv, ha = keyed, {"Authorization": f"Bearer {KEY_A}"}
    c = srv.client(KEY_A)
    base = next(m.id for m in c.models.list() if "tiny" in m.id)
    msgs = [{"role": "system", "content": "Reply with JSON."}, {"role": "user", "content": "My card was charged twice!"}]
    r = c.chat.completions.create(model=base, messages=msgs, max_tokens=12, temperature=0)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.model == base and isinstance(text, str) and text
    u = r.usage
    assert 0 < u.completion_tokens <= 12 and u.prompt_tokens > 5 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert r.choices[0].finish_reason in ("stop", "length")
    # greedy is deterministic: the same again, and streaming yields the same text
    assert c.chat.completions.create(model=base, messages=msgs, max_tokens=12, temperature=0).choices[0].message.content == text
    chunks = list(c.chat.completions.create(model=base, messages=msgs, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == [r.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == u.completion_tokens and chunks[-1].usage.prompt_tokens == u.prompt_tokens
    # stop: the reply ends before the stop string
    if len(text.strip()) > 3:
        cut = text.strip()[len(text.strip()) // 2:][:2]
        r2 = c.chat.completions.create(model=base, messages=msgs, max_tokens=12, temperature=0, stop=[cut])
        assert r2.choices[0].message.content == text[:text.find(cut)] and r2.choices[0].finish_reason == "stop"
    # max_tokens=1
    assert c.chat.completions.create(model=base, messages=msgs, max_tokens=1, temperature=0).usage.completion_tokens == 1
    # concurrent requests are batched together and each gets its own (correct) answer
    prompts = [[{"role": "user", "content": f"ticket number {i}"}] for i in range(8)]
    solo = [c.chat.completions.create(model=base, messages=p, max_tokens=6, temperature=0).choices[0].message.content for p in prompts[:2]]
    with cf.ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda p: c.chat.completions.create(model=base, messages=p, max_tokens=6, temperature=0).choices[0].message.content, prompts))
    assert outs[:2] == solo
    m = httpx.get(srv.url + "/metrics", headers=ha).text
    assert int(float(m.split("finetune_nb_max_batch_seen ")[1].split()[0])) > 1
    # streams join the same batches (mixed with plain requests) and each streams its own answer
    def streamed(p): return "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(model=base, messages=p, max_tokens=6, temperature=0, stream=True) if ch.choices)
    batches = lambda: float(httpx.get(srv.url + "/metrics", headers=ha).text.split("finetune_nb_batches ")[1].split()[0])
    before = batches()
    with cf.ThreadPoolExecutor(8) as ex:
        mixed = list(ex.map(lambda ip: streamed(ip[1]) if ip[0] % 2 else c.chat.completions.create(model=base, messages=ip[1], max_tokens=6, temperature=0).choices[0].message.content, enumerate(prompts)))
    assert mixed == outs
    before = batches()
    with cf.ThreadPoolExecutor(8) as ex: assert list(ex.map(streamed, prompts)) == outs
    assert batches() - before < len(prompts)   # fewer generate calls than streams: they were batched (one at a time would be 8)


def _seed_model(state_dir:Path, base:str, adapter:str, model_id="ft:tiny-random:seeded:ftjob-" + "c" * 24):
    "Register a fine-tuned model in a server's store before it starts (a stand-in for a finished job)."
    Store(state_dir/"state.db").insert("models", {"id": model_id, "object": "model", "created": 1, "owned_by": "user"},
                                       owner=owner_of_key(None), internal={"base": base, "adapter": adapter, "job": None})
    return model_id


def test_aliases_swap_and_external_backend(start_server, tmp_path, tiny_random_path, tiny_random_adapter):
    ft = _seed_model(tmp_path/"serve-a", tiny_random_path, tiny_random_adapter)
    a = start_server("a", base_model=tiny_random_path)
    b = start_server("b", base_model=tiny_random_path, env={"FINETUNE_NB_BACKENDS": json.dumps({"a": {"url": a.base_url}})})   # the operator declares a as b's backend
    ca, cb = a.client(), b.client()
    msgs = [{"role": "user", "content": "hello world"}]
    ask = lambda c, model: c.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0).choices[0].message.content
    base_out, ft_out = ask(ca, tiny_random_path), ask(ca, ft)
    assert base_out != ft_out                      # the adapter changes the model
    assert ft in [m.id for m in ca.models.list()] and ca.models.retrieve(ft).owned_by == "user"
    dep = lambda srv, **kw: httpx.post(srv.url + "/v1/fine-tune/deploy", json=kw)
    infer = lambda srv, alias: httpx.post(srv.url + "/v1/fine-tune/inference", json={"alias": alias, "messages": msgs, "max_tokens": 8, "temperature": 0}).json()
    r = dep(a, alias="prod", model=tiny_random_path)
    assert r.status_code == 200 and r.json()["version"] == 1
    assert infer(a, "prod")["output"] == base_out and infer(a, "prod")["model"] == tiny_random_path
    assert ask(ca, "prod") == base_out             # chat.completions resolves aliases too
    r = dep(a, alias="prod", model=ft)             # the swap
    assert r.json()["version"] == 2 and r.json()["previous_model"] == tiny_random_path
    assert infer(a, "prod")["output"] == ft_out and ask(ca, "prod") == ft_out
    # bad deploys
    assert dep(a, alias="prod", model="ft:nope").status_code == 404
    assert dep(a, alias="a/b", model=ft).status_code == 400
    assert dep(a, alias="x", model="m", base_url="file:///etc/passwd").status_code == 400
    assert dep(a, alias="x", model="m", base_url="http://evil.invalid/v1", api_key_env="OPENAI_API_KEY").status_code == 400   # no secret exfiltration
    assert httpx.post(a.url + "/v1/fine-tune/inference", json={"alias": "nope", "prompt": "hi"}).status_code == 404
    # server b serves alias "remote" from server a's alias "prod" (an operator-declared OpenAI-compatible backend)
    assert dep(b, alias="remote", model="prod", base_url=a.base_url).status_code == 400   # callers name declared backends, never URLs
    r = dep(b, alias="remote", model="prod", backend="a")
    assert r.status_code == 200 and r.json()["backend"] == "a"
    assert ask(cb, "remote") == ft_out and infer(b, "remote")["output"] == ft_out
    streamed = "".join(ch.choices[0].delta.content or "" for ch in cb.chat.completions.create(model="remote", messages=msgs, max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert streamed == ft_out
    dep(a, alias="prod", model=tiny_random_path)   # swapping on a is seen through b, no client change
    assert ask(cb, "remote") == base_out
    listed = httpx.get(a.url + "/v1/fine-tune/models").json()
    assert {x["alias"]: x["model"] for x in listed["aliases"]} == {"prod": tiny_random_path}
    assert ft in [m["id"] for m in listed["data"]]
    # deleting the fine-tuned model
    assert ca.models.delete(ft).deleted and ft not in [m.id for m in ca.models.list()]
    with pytest.raises(openai.PermissionDeniedError): ca.models.delete(tiny_random_path)


def test_schemathesis_no_server_errors(tmp_path):
    "Fuzz every operation of the app's own OpenAPI schema: nothing answers 5xx."
    import schemathesis
    from hypothesis import settings, given, HealthCheck
    app = create_app(tmp_path/"data", api_keys="", base_models=["fuzz-base"], run_jobs=False,
                     loader=lambda b, a: (_ for _ in ()).throw(AssertionError("no model is loaded while fuzzing")))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures, n = [], 0
    for op in schema.get_all_operations():
        op = op.ok()
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def run(case):
            nonlocal n
            r = case.call(); n += 1
            if r.status_code >= 500: failures.append((op.label, r.status_code, r.text[:300]))
            elif r.status_code >= 400:
                assert set(r.json()["error"]) >= {"message", "type", "param", "code"}, (op.label, r.text[:300])
        run()
    assert not failures, failures
    assert n > 50


def test_schemathesis_stateful_no_server_errors(tmp_path, tiny_random_path):
    "Stateful fuzzing: schemathesis follows the app's OpenAPI links (upload -> job -> events/cancel, deploy -> inference) and never gets a 5xx."
    import schemathesis
    from hypothesis import settings, HealthCheck
    # a real (tiny, random) base model: the links lead to valid inference on a deployed alias, which loads it and generates
    app = create_app(tmp_path/"data", api_keys="", base_models=[tiny_random_path], run_jobs=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen, failures = [], []
    valid = {"POST /v1/files": lambda body: {"file": demo_jsonl(), "purpose": "fine-tune"},
             "POST /v1/fine-tune/deploy": lambda body: {**(body if isinstance(body, dict) else {}), "alias": "fuzz", "model_id": tiny_random_path}}
    class Machine(schema.as_state_machine()):
        calls = 0
        def before_call(self, case):   # every other upload and deploy is made valid, so the links lead somewhere
            Machine.calls += 1
            if case.operation.label in valid and Machine.calls % 2: case.body = valid[case.operation.label](case.body)
        def teardown(self):   # each example starts from an empty server, so the same choices take the same path on a replay
            from finetune_nb.serve.store import TABLES
            store, Machine.calls = app.state.service.store, 0
            with store._lock:
                for t in (*TABLES, "aliases"): store._db.execute(f"DELETE FROM {t}")
        def validate_response(self, response, case, **kw):   # the property under test: no server errors (and OpenAI's error shape)
            seen.append((case.operation.label, response.status_code))
            if response.status_code >= 500: failures.append((case.operation.label, response.status_code, response.text[:300]))
            elif response.status_code >= 400: assert set(response.json()["error"]) >= {"message", "type", "param", "code"}, response.text[:300]
    Machine.run(settings=settings(max_examples=25, stateful_step_count=6, deadline=None, suppress_health_check=list(HealthCheck), database=None))
    assert not failures, failures
    assert len({label for label, _ in seen}) >= 5 and len(seen) > 50, seen[:20]
