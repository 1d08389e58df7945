"OpenAIFineTuner end to end with the real openai SDK over HTTP against the loopback fake of OpenAI's API."
import asyncio, base64, json

import openai
import pytest

from finetune_nb.core import DataValidationError, JobFailedError, RemoteError
from finetune_nb.openai_ft import DEFAULT_MODEL, FineTuneJob, MetricsTable, OpenAIFineTuner, plot_metrics

JOB = "/v1/fine_tuning/jobs"


def records(n=12, tag="q"):
    return [{"messages": [{"role": "system", "content": "Answer yes or no."},
                          {"role": "user", "content": f"{tag}: is {i} even?"},
                          {"role": "assistant", "content": "yes" if i % 2 == 0 else "no"}]} for i in range(n)]


@pytest.fixture
def ft(fake_openai):
    return OpenAIFineTuner(base_url=fake_openai.base_url, api_key="sk-test-key", backoff=0.001, backoff_max=0.01)


class FakeClock:
    "A clock whose `sleep` just moves time on, and remembers the sleeps."
    def __init__(self): self.t, self.sleeps = 0.0, []
    def __call__(self): return self.t
    def sleep(self, s): self.sleeps.append(s); self.t += s


def test_fine_tune_end_to_end(ft, fake_openai, tmp_path):
    run = ft.fine_tune(records(), validation_data=records(10, "v"), suffix="triage", seed=3,
                       hyperparameters={"n_epochs": 2}, poll_interval=0.001, progress=False)
    job = run.job
    assert (job.status, job.model, job.error) == ("succeeded", DEFAULT_MODEL, None)
    assert run.model.startswith(f"ft:{DEFAULT_MODEL}:personal:triage:")
    assert job.hyperparameters["n_epochs"] == 2 and job.trained_tokens > 0
    # what reached the API: two uploads, one job with the files, seed, suffix and supervised method
    assert fake_openai.count("POST", "/v1/files") == 2 and fake_openai.count("POST", JOB) == 1
    sent = fake_openai.jobs[job.job_id]["obj"]
    assert (sent["training_file"], sent["validation_file"], sent["seed"]) == (run.training_file, run.validation_file, 3)
    assert sent["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
    uploaded = fake_openai.files[run.training_file]["content"].decode().splitlines()
    assert [json.loads(l) for l in uploaded] == records()
    # metrics from the (base64) result file
    m = run.metrics
    assert isinstance(m, MetricsTable) and len(m) == fake_openai.n_steps
    assert m.columns == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert m["step"] == list(range(1, 11)) and m[0]["valid_loss"] is None and m.last("valid_loss") is not None
    assert m["train_loss"][-1] < m["train_loss"][0]
    fig = plot_metrics(m, path=tmp_path/"loss.png")
    assert (tmp_path/"loss.png").stat().st_size > 1000
    assert [l.get_label() for l in fig.axes[0].lines] == ["train_loss", "valid_loss"]
    cks = ft.list_checkpoints(job.job_id)
    assert [c.step_number for c in cks] == [10, 6, 3] and cks[0].fine_tuned_model_checkpoint == run.model


def test_other_purposes_skip_chat_validation(ft, fake_openai):
    f = ft.upload_file([{"messages": [{"role": "user", "content": "x"}]}], purpose="batch", filename="b.jsonl", wait=False)
    assert f.purpose == "batch" and fake_openai.count("POST", "/v1/files") == 1


def test_upload_path_and_alpaca_conversion(ft, fake_openai, tmp_path):
    p = tmp_path/"train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in records()))
    f = ft.upload_file(p, poll_interval=0.001)
    assert (f.status, f.filename) == ("processed", "train.jsonl")
    assert fake_openai.files[f.id]["content"] == p.read_bytes()
    a = tmp_path/"alpaca.json"
    a.write_text(json.dumps([{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(10)]))
    f2 = ft.upload_file(a, poll_interval=0.001)
    lines = [json.loads(l) for l in fake_openai.files[f2.id]["content"].decode().splitlines()]
    assert f2.filename == "alpaca.jsonl" and len(lines) == 10
    assert lines[3]["messages"][-1] == {"role": "assistant", "content": "3"}


def test_invalid_file_refused_before_upload(ft, fake_openai, tmp_path):
    p = tmp_path/"bad.jsonl"
    rows = [json.dumps(r) for r in records()]
    rows[2] = '{"messages": [oops'
    rows[5] = json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]})
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataValidationError) as ei:
        ft.upload_file(p)
    msg = str(ei.value)
    assert "bad.jsonl:3" in msg and "bad.jsonl:6: messages[0].role" in msg
    assert [e.line for e in ei.value.report.errors] == [3, 6]
    with pytest.raises(DataValidationError, match="too_few_examples"):
        ft.fine_tune(records(3))                       # in-memory data is checked the same way
    assert fake_openai.count("POST", "/v1/files") == 0 and fake_openai.count("POST", JOB) == 0


def test_failing_job_raises_openai_message(ft, fake_openai):
    f = ft.upload_file(records(), poll_interval=0.001)
    fake_openai.next_job_error = ("invalid_n_examples", "Training file has 12 example(s), but must have at least 10 after dedup.")
    job = ft.create_job(f.id)
    with pytest.raises(JobFailedError) as ei:
        ft.wait_for_completion(job.job_id, poll_interval=0.001, progress=False)
    assert "but must have at least 10 after dedup. [invalid_n_examples]" in str(ei.value)
    assert job.job_id in str(ei.value) and ei.value.job.status == "failed"
    # without raising, the failed job comes back
    again = ft.wait_for_completion(job.job_id, poll_interval=0.001, progress=False, raise_on_failure=False)
    assert (again.status, again.error["code"]) == ("failed", "invalid_n_examples")


def test_server_side_validation_failure_flows_through(ft, fake_openai):
    "With validate=False a broken file reaches the server; its own error message comes back."
    f = ft.upload_file([{"messages": [{"role": "user", "content": "hi"}]}]*10, validate=False, poll_interval=0.001)
    job = ft.create_job(f.id)
    with pytest.raises(JobFailedError, match="Line 1: no assistant message"):
        ft.wait_for_completion(job.job_id, poll_interval=0.001, progress=False)


def test_cancel(ft, fake_openai):
    job = ft.create_job(records())          # a dataset: uploaded first
    assert fake_openai.count("POST", "/v1/files") == 1
    c = ft.cancel_job(job)                   # a FineTuneJob works wherever a job id does
    assert c.status == "cancelled" and c.finished_at is not None
    with pytest.raises(JobFailedError, match="was cancelled"):
        ft.wait_for_completion(job.job_id, poll_interval=0.001, progress=False)
    with pytest.raises(RemoteError, match=r"cancelling job .* HTTP 400: .*already completed"):
        ft.cancel_job(job.job_id)
    assert "Fine-tuning job cancelled" in [e.message for e in ft.list_events(job.job_id)]


def test_429_then_success_is_retried(fake_openai):
    ft = OpenAIFineTuner(base_url=fake_openai.base_url, api_key="sk-x", sdk_retries=0, backoff=0.001)
    job = ft.create_job(records())
    rule = fake_openai.fail(f"{JOB}/{job.job_id}", status=429, times=3, method="GET")
    done = ft.wait_for_completion(job.job_id, poll_interval=0.001, progress=False)
    assert done.status == "succeeded" and rule.times == 0
    # 3 refused + the 3 successful polls that moved the job validating -> queued -> running -> succeeded
    assert fake_openai.count("GET", f"{JOB}/{job.job_id}") == 6


def test_sdk_retries_observed_on_upload(ft, fake_openai):
    fake_openai.fail("/v1/files", status=429, times=2, method="POST")
    f = ft.upload_file(records(), poll_interval=0.001)
    assert f.status == "processed" and fake_openai.count("POST", "/v1/files") == 3


def test_500_until_timeout_is_a_clear_error(fake_openai):
    ft = OpenAIFineTuner(base_url=fake_openai.base_url, api_key="sk-x", sdk_retries=0, backoff=0.005, backoff_max=0.02)
    job = ft.create_job(records())
    fake_openai.fail(f"{JOB}/{job.job_id}", status=500, message="The server had an error while processing your request.")
    with pytest.raises(RemoteError) as ei:
        ft.wait_for_completion(job.job_id, poll_interval=0.01, timeout=0.2, progress=False)
    msg = str(ei.value)
    assert f"gave up waiting for fine-tuning job {job.job_id}" in msg and "HTTP 500: The server had an error" in msg
    assert fake_openai.count("GET", f"{JOB}/{job.job_id}") >= 3       # it did back off and retry


def test_500_without_timeout_gives_up_after_retries(fake_openai):
    ft = OpenAIFineTuner(base_url=fake_openai.base_url, api_key="sk-x", sdk_retries=0, retries=2, backoff=0.001)
    fake_openai.fail("/v1/fine_tuning/jobs/ftjob-x", status=503)
    with pytest.raises(RemoteError, match=r"polling job ftjob-x failed after 3 attempt\(s\): HTTP 503"):
        ft.wait_for_completion("ftjob-x", progress=False)
    assert fake_openai.count("GET", f"{JOB}/ftjob-x") == 3


def test_timeout_while_job_runs(ft, fake_openai):
    fake_openai.advance, fake_openai.stage_seconds = "clock", 1000.0
    job = ft.create_job(records())
    with pytest.raises(RemoteError, match=r"is still 'validating_files' after 0.05s"):
        ft.wait_for_completion(job.job_id, poll_interval=0.01, timeout=0.05, progress=False)


def test_wait_on_fake_clock_respects_poll_interval(fake_openai):
    clk = FakeClock()
    ft = OpenAIFineTuner(base_url=fake_openai.base_url, api_key="sk-x", sleep=clk.sleep, clock=clk)
    job = ft.create_job(records())
    done = ft.wait_for_completion(job.job_id, poll_interval=30, timeout=3600, progress=False)
    assert done.status == "succeeded" and clk.sleeps == [30, 30]   # 3 polls: queued, running, succeeded
    job2 = ft.create_job(records())
    fake_openai.fail(f"{JOB}/{job2.job_id}", status=500)
    with pytest.raises(RemoteError, match="gave up waiting"):
        ft.wait_for_completion(job2.job_id, poll_interval=30, timeout=100, progress=False)
    backoffs = clk.sleeps[2:]
    assert backoffs[:3] == [1.0, 2.0, 4.0] and abs(sum(backoffs) - 100) < 1e-9   # exponential, stops at the deadline


def test_list_jobs_paging(ft, fake_openai):
    f = ft.upload_file(records(), poll_interval=0.001)
    ids = [ft.create_job(f.id, suffix=f"s{i}").job_id for i in range(7)]
    before = fake_openai.count("GET", JOB)
    jobs = ft.list_jobs(limit=None, page_size=3)
    assert [j.job_id for j in jobs] == ids[::-1]                     # all 7, newest first
    assert fake_openai.count("GET", JOB) - before == 3               # pages of 3, 3, 1
    assert [j.job_id for j in ft.list_jobs(limit=4, page_size=3)] == ids[::-1][:4]
    assert [j.job_id for j in ft.list_jobs(after=ids[3], limit=None)] == ids[:3][::-1]
    assert all(isinstance(j, FineTuneJob) and j.status == "validating_files" for j in jobs)


def test_events_paging(ft, fake_openai):
    job = ft.create_job(records())
    ft.wait_for_completion(job.job_id, poll_interval=0.001, progress=False)
    n = len(fake_openai.events[job.job_id])
    assert n == 16
    before = fake_openai.count("GET", f"{JOB}/{job.job_id}/events")
    evs = ft.list_events(job.job_id, limit=None, page_size=5)
    assert fake_openai.count("GET", f"{JOB}/{job.job_id}/events") - before == 4
    assert [e.id for e in evs] == [e["id"] for e in reversed(fake_openai.events[job.job_id])]
    assert evs[0].message == "The job has successfully completed" and evs[-1].message.startswith("Created fine-tuning job")
    assert len(ft.list_events(job.job_id, limit=7, page_size=5)) == 7
    metrics = [e for e in evs if e.type == "metrics"]
    assert len(metrics) == 10 and metrics[0].data["step"] == 10 and metrics[0].data["total_steps"] == 10


def test_progress_bar_shows_status_and_latest_event(ft, capsys):
    job = ft.create_job(records())
    ft.wait_for_completion(job.job_id, poll_interval=0.001, progress=True)
    err = capsys.readouterr().err
    assert "succeeded" in err and "The job has successfully completed" in err and "10/10" in err


def test_metrics_plain_csv_and_errors(ft, fake_openai):
    fake_openai.result_base64 = False
    job = ft.create_job(records())
    with pytest.raises(RemoteError, match="has no result file"):
        ft.download_metrics(job)
    ft.wait_for_completion(job.job_id, poll_interval=0.001, progress=False)
    m = ft.download_metrics(job.job_id)
    assert len(m) == 10 and isinstance(m[1]["valid_loss"], float)
    with pytest.raises(RemoteError, match="retrieving job ftjob-missing failed: HTTP 404"):
        ft.get_job_status("ftjob-missing")


def test_metrics_table_parsing():
    csv = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n1,2.5,0.5,,\n2,1.25,0.75,1.5,0.7\n"
    t = MetricsTable.from_csv(base64.b64decode(base64.b64encode(csv.encode())).decode())
    assert t.rows == [{"step": 1, "train_loss": 2.5, "train_accuracy": 0.5, "valid_loss": None, "valid_mean_token_accuracy": None},
                      {"step": 2, "train_loss": 1.25, "train_accuracy": 0.75, "valid_loss": 1.5, "valid_mean_token_accuracy": 0.7}]
    assert t.last("valid_loss") == 1.5 and "MetricsTable(2 rows)" in repr(t)


def test_async_wait(ft, fake_openai):
    jobs = [ft.create_job(records()) for _ in range(3)]
    fake_openai.next_job_error = ("server_error", "boom")
    bad = ft.create_job(records())

    async def main():
        ok = await asyncio.gather(*(ft.wait_for_completion_async(j.job_id, poll_interval=0.001) for j in jobs))
        with pytest.raises(JobFailedError, match=r"boom \[server_error\]"):
            await ft.wait_for_completion_async(bad.job_id, poll_interval=0.001)
        await ft.async_client.close()
        return ok
    assert [j.status for j in asyncio.run(main())] == ["succeeded"] * 3


def test_api_key_not_logged(fake_openai, caplog):
    ft = OpenAIFineTuner(base_url=fake_openai.base_url, api_key="sk-secret-abcdef123456", sdk_retries=0, retries=1, backoff=0.001)
    fake_openai.fail("/v1/models", status=500, times=1)
    with caplog.at_level("WARNING", logger="finetune_nb"):
        ft._call(ft.client.models.list, what="listing models")
    assert "listing models: HTTP 500" in caplog.text and "sk-secret" not in caplog.text


# ---------------------------------------------------------------- the fake itself (other areas rely on it)

def test_fake_files_chat_and_clock(openai_client, fake_openai):
    c = openai_client
    f = c.files.create(file=("t.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    assert f.status == "uploaded" and c.files.retrieve(f.id).status == "processed"
    assert c.files.content(f.id).read() == b'{"messages": []}\n'
    assert [x.id for x in c.files.list()] == [f.id]
    assert c.files.delete(f.id).deleted and list(c.files.list()) == []
    with pytest.raises(openai.BadRequestError, match="Must be .jsonl"):
        c.files.create(file=("t.txt", b"x"), purpose="fine-tune")
    fake_openai.chat_reply = lambda req: ["first", "second"]
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi there"}])
    assert [ch.message.content for ch in r.choices] == ["first", "second"] and r.usage.prompt_tokens == 2
    fake_openai.chat_reply = lambda req: "streamed"
    chunks = list(c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "streamed" and chunks[-1].choices[0].finish_reason == "stop"
    # clock mode: stages follow wall time, not polls
    fake_openai.advance, fake_openai.stage_seconds = "clock", 1000.0
    f2 = c.files.create(file=("t.jsonl", b'{"messages": [{"role": "assistant", "content": "a"}]}\n'), purpose="fine-tune")
    j = c.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f2.id)
    assert [c.fine_tuning.jobs.retrieve(j.id).status for _ in range(3)] == ["validating_files"] * 3
    fake_openai.stage_seconds = 1e-9
    assert c.fine_tuning.jobs.retrieve(j.id).status == "succeeded"
    assert c.fine_tuning.jobs.retrieve(j.id).fine_tuned_model in [m.id for m in c.models.list()]


# ---------------------------------------------------------------- the same client against finetune_nb's own server

@pytest.mark.slow
def test_fine_tune_against_local_server(start_server, serve_base_model):
    "Unchanged client, real local trainer behind finetune_nb's OpenAI-compatible server."
    srv = start_server("openai-ft", api_keys="sk-local-test")
    ft = OpenAIFineTuner(base_url=srv.base_url, api_key="sk-local-test", backoff=0.05)
    run = ft.fine_tune(records(16), validation_data=records(10, "v"), model=serve_base_model, suffix="local",
                       hyperparameters={"n_epochs": 1}, poll_interval=0.5, timeout=400, progress=False)
    assert run.job.status == "succeeded" and run.model and "local" in run.model
    assert len(run.metrics) >= 1 and run.metrics.columns[:2] == ["step", "train_loss"]
    assert any(e.message == "The job has successfully completed" for e in ft.list_events(run.job, limit=None))
    assert run.job.job_id in [j.job_id for j in ft.list_jobs(limit=None)]
    with pytest.raises(DataValidationError):
        ft.upload_file(records(3))


def pairs(n=12, tag="q"):
    return [{"input": {"messages": [{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": f"{tag}: is {i} even?"}]},
             "preferred_output": [{"role": "assistant", "content": "yes" if i % 2 == 0 else "no"}],
             "non_preferred_output": [{"role": "assistant", "content": "no" if i % 2 == 0 else "yes"}]} for i in range(n)]


def test_dpo_fine_tune_end_to_end(ft, fake_openai, tmp_path):
    # TRL's conversational prompt/chosen/rejected on disk: validated as pairs, uploaded as OpenAI's DPO JSONL
    trl = tmp_path/"pairs.jsonl"
    trl.write_text("".join(json.dumps({"prompt": p["input"]["messages"], "chosen": p["preferred_output"], "rejected": p["non_preferred_output"]}) + "\n"
                           for p in pairs()))
    run = ft.fine_tune(trl, validation_data=pairs(10, "v"), method="dpo", beta=0.25, hyperparameters={"n_epochs": 2},
                       seed=1, poll_interval=0.001, progress=False)
    assert run.job.status == "succeeded" and run.model.startswith(f"ft:{DEFAULT_MODEL}:")
    sent = fake_openai.jobs[run.job.job_id]["obj"]
    assert (sent["method"]["type"], sent["method"]["dpo"]) == ("dpo", {"hyperparameters": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 2, "beta": 0.25}})
    assert run.job.method["dpo"]["hyperparameters"]["beta"] == 0.25 and run.job.hyperparameters["n_epochs"] == 2
    assert [json.loads(l) for l in fake_openai.files[run.training_file]["content"].decode().splitlines()] == pairs()
    assert [json.loads(l) for l in fake_openai.files[run.validation_file]["content"].decode().splitlines()] == pairs(10, "v")
    # a whole method dict goes as it is
    j = ft.create_job(run.training_file, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5}}})
    assert fake_openai.jobs[j.job_id]["obj"]["method"]["dpo"]["hyperparameters"]["beta"] == 0.5


def test_dpo_data_is_validated_before_uploading(ft, fake_openai, tmp_path):
    bad = pairs()
    bad[4] = {**bad[4], "non_preferred_output": bad[4]["preferred_output"]}
    with pytest.raises(DataValidationError, match=r"<memory>:5: non_preferred_output") as e: ft.fine_tune(bad, method="dpo", progress=False)
    assert "identical_outputs" in str(e.value) or "same as the preferred" in str(e.value)
    path = tmp_path/"bad.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs()[:11]) + json.dumps({"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}) + "\n")
    with pytest.raises(DataValidationError, match=r"bad.jsonl:12: input.messages"): ft.upload_file(path, method="dpo")
    with pytest.raises(Exception, match="needs preference data"): ft.fine_tune(records(), method="dpo", progress=False)   # chat data for a DPO job
    with pytest.raises(Exception, match="pass method='dpo'"): ft.fine_tune(pairs(), progress=False)                       # pairs for a supervised job
    with pytest.raises(Exception, match="DPO hyperparameter"): ft.fine_tune(records(), beta=0.1, progress=False)
    with pytest.raises(Exception, match="unknown method"): ft.fine_tune(pairs(), method="rlhf", progress=False)
    assert fake_openai.count("POST", "/v1/files") == 0 and fake_openai.count("POST", JOB) == 0
