"""A DPO job through the server with the official openai SDK: preference uploads validated as such, `method: {"type": "dpo"}`
as OpenAI's spec defines it, reward metrics in the events, the model served; its responses validate against the spec."""
import json, time
import openai, pytest
from test_openapi_conformance import spec, validate, route_schema, KEY   # noqa: F401 (fixtures)

HP = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 5, "beta": 0.2}
LOCAL = {"max_steps": 2, "logging_steps": 1, "save_steps": 100, "max_length": 256}

def pairs(n=12):
    return [{"input": {"messages": [{"role": "user", "content": f"Ticket {i}: the app crashes. Priority?"}]},
             "preferred_output": [{"role": "assistant", "content": '{"priority": "high"}'}],
             "non_preferred_output": [{"role": "assistant", "content": '{"priority": "medium"}'}]} for i in range(n)]

def test_dpo_job_with_the_openai_sdk(start_server, spec, validate, tmp_path):
    srv = start_server("dpo", api_keys=KEY)
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY)
    bad = tmp_path/"bad.jsonl"
    bad.write_text("".join(json.dumps(p) + "\n" for p in pairs()[:11] + [{**pairs()[0], "non_preferred_output": pairs()[0]["preferred_output"]}]))
    with pytest.raises(openai.BadRequestError, match="line 12: non_preferred_output: the non-preferred output is the same"): c.files.create(file=open(bad, "rb"), purpose="fine-tune")   # validated as preference data
    good = tmp_path/"pairs.jsonl"
    good.write_text("".join(json.dumps(p) + "\n" for p in pairs()))
    f = c.files.create(file=open(good, "rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="method.type"):
        c.fine_tuning.jobs.create(model=srv.base_model, training_file=f.id, method={"type": "reinforcement"})
    with pytest.raises(openai.BadRequestError, match="beta"):
        c.fine_tuning.jobs.create(model=srv.base_model, training_file=f.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}})
    job = c.fine_tuning.jobs.create(model=srv.base_model, training_file=f.id, hyperparameters=LOCAL,
                                    method={"type": "dpo", "dpo": {"hyperparameters": HP}})
    validate(job.model_dump(mode="json", exclude_unset=True), route_schema(spec, "post", "/fine_tuning/jobs"))
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    t0 = time.time()
    while (j := c.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() - t0 < 300; time.sleep(0.5)
    assert j.status == "succeeded", j.error
    raw = c.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
    validate(raw, route_schema(spec, "get", "/fine_tuning/jobs/{fine_tuning_job_id}"))
    assert raw["method"]["type"] == "dpo" and raw["method"]["dpo"]["hyperparameters"]["beta"] == 0.2 and raw["hyperparameters"]["n_epochs"] == 1
    ev = c.fine_tuning.jobs.with_raw_response.list_events(job.id, limit=100).http_response.json()
    validate(ev, route_schema(spec, "get", "/fine_tuning/jobs/{fine_tuning_job_id}/events"))
    metrics = [e for e in ev["data"] if e["type"] == "metrics"]
    assert metrics and all("rewards/margins" in e["data"] and "rewards/accuracies" in e["data"] for e in metrics)
    r = c.chat.completions.create(model=j.fine_tuned_model, messages=[{"role": "user", "content": "Ticket 1: the app crashes. Priority?"}], max_tokens=8)
    assert r.choices[0].message.role == "assistant"
    sup = c.fine_tuning.jobs.create(model=srv.base_model, training_file=f.id, method={"type": "supervised"})
    assert sup.method.type == "supervised"   # supervised takes the chat path: on preference data it fails, naming it
    t0 = time.time()
    while (s := c.fine_tuning.jobs.retrieve(sup.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() - t0 < 120; time.sleep(0.5)
    assert s.status == "failed" and "preference data" in s.error.message
    # our OpenAI client class, as a user calls it against OpenAI: pairs validated and uploaded as DPO data, the job trains with DPO
    from finetune_nb.openai_ft import OpenAIFineTuner
    run = OpenAIFineTuner(base_url=srv.url + "/v1", api_key=KEY).fine_tune(pairs(), model=srv.base_model, method="dpo", beta=0.3,
                                                                          hyperparameters={**LOCAL, "n_epochs": 1, "batch_size": 4},
                                                                          poll_interval=0.5, timeout=300, progress=False)
    assert run.job.status == "succeeded" and run.job.fine_tuned_model
    raw = c.fine_tuning.jobs.with_raw_response.retrieve(run.job.job_id).http_response.json()
    assert raw["method"]["type"] == "dpo" and raw["method"]["dpo"]["hyperparameters"]["beta"] == 0.3
