"Leaving a platform: `finetune-nb archive` then `finetune-nb migrate --all`, between two real loopback servers with API keys (one plays OpenAI)."
import hashlib, json, time
from pathlib import Path
import pytest
from finetune_nb.cli import run_cli
from finetune_nb.data import write_openai_jsonl
from finetune_nb.migrate import SETTING_SOURCES
from finetune_nb.openai_ft import OpenAIFineTuner

SRC_KEY, TGT_KEY = "sk-source-account", "sk-target-team"
HP = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0, "max_steps": 2}
sha = lambda b: hashlib.sha256(b).hexdigest()


@pytest.fixture
def account(start_server, tmp_path, monkeypatch):
    "A source account with 3 jobs (2 succeeded, 1 cancelled whose training file was deleted since), and an empty target."
    from finetune_nb.demo import make_demo_data
    src, tgt = start_server("openai", api_keys=SRC_KEY), start_server("team", api_keys=TGT_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", SRC_KEY)
    monkeypatch.setenv("FINETUNE_NB_TARGET_API_KEY", TGT_KEY)
    monkeypatch.chdir(tmp_path)
    ft = OpenAIFineTuner(base_url=src.base_url, api_key=SRC_KEY)
    data = {}
    for name, seed in (("triage", 1), ("legal", 2), ("gone", 3)):
        train, test = make_demo_data(n_train=24, n_test=12, seed=seed)
        data[name] = write_openai_jsonl(train, tmp_path/f"{name}-train.jsonl"), write_openai_jsonl(test, tmp_path/f"{name}-valid.jsonl")
    jobs = {}
    for name in ("triage", "legal"):
        run = ft.fine_tune(data[name][0], model="finetune-nb/tiny", validation_data=data[name][1], suffix=name, seed=7,
                           hyperparameters=HP, poll_interval=0.5, timeout=600, progress=False)
        assert run.job.status == "succeeded"
        jobs[name] = run.job
    gone = ft.create_job(ft.upload_file(data["gone"][0]).id, model="finetune-nb/tiny", hyperparameters={"max_steps": 5000})
    t0 = time.monotonic()
    while ft.get_job_status(gone.job_id).status != "running":   # cancel a running job (cancelling a queued one races the worker)
        assert time.monotonic() - t0 < 120, "the job to cancel never started"
        time.sleep(0.2)
    ft.cancel_job(gone.job_id)
    ft.client.files.delete(gone.training_file)      # the source no longer serves it: the archive must say so
    jobs["gone"] = ft.get_job_status(gone.job_id)
    assert jobs["gone"].status == "cancelled"
    return src, tgt, ft, jobs, data


def cli_json(*args):
    "Run a command with --json: stdout must be exactly one JSON document."
    rc, out, err = run_cli(*args, "--json")
    return rc, json.loads(out), err


def target_jobs(tgt):
    return OpenAIFineTuner(base_url=tgt.base_url, api_key=TGT_KEY).list_jobs(limit=None)


def test_archive_then_migrate_all(account, tmp_path, monkeypatch):
    src, tgt, ft, jobs, data = account
    A, F = tmp_path/"archive", tmp_path/"runs"/"fleet"
    # 1. archive: every job and file, byte for byte; the file the source refuses is listed with the reason
    rc, ar, err = cli_json("archive", "--out", A, "--base-url", src.base_url)
    assert rc == 0 and "archive" in err                     # the progress bar went to stderr
    man = json.loads((A/"manifest.json").read_text())
    assert set(man["jobs"]) == {j.job_id for j in jobs.values()} and ar["jobs"] == 3
    assert man["jobs"][jobs["gone"].job_id]["status"] == "cancelled"
    for name in ("triage", "legal"):
        j = jobs[name]
        saved = json.loads((A/"jobs"/j.job_id/"job.json").read_text())
        assert saved["hyperparameters"]["learning_rate_multiplier"] == 2.0 and saved["method"]["type"] == "supervised"
        assert len(json.loads((A/"jobs"/j.job_id/"events.json").read_text())) == man["jobs"][j.job_id]["events"] > 3
        assert json.loads((A/"jobs"/j.job_id/"checkpoints.json").read_text()) is not None
        for fid, local in ((j.training_file, data[name][0]), (j.validation_file, data[name][1]), (j.result_files[0], None)):
            e = man["files"][fid]
            served = ft.client.files.content(fid).read()
            assert e["status"] == "ok" and e["sha256"] == sha(served) == sha((A/e["path"]).read_bytes()) and e["bytes"] == len(served)
            if local: assert (A/e["path"]).read_bytes() == Path(local).read_bytes()
    refused = {r["file_id"]: r for r in ar["refused"]}
    assert list(refused) == [jobs["gone"].training_file] and "404" in refused[jobs["gone"].training_file]["reason"]
    assert refused[jobs["gone"].training_file]["used_by"] == [jobs["gone"].job_id]

    # 2. a wrong target key: the hint names the target's key, and a job the source does not have speaks CLI; no empty folders
    monkeypatch.setenv("WRONG_KEY", "sk-nope")
    rc, out, err = run_cli("migrate", jobs["triage"].job_id, "--base-url", src.base_url, "--archive", A, "--target-url", tgt.base_url,
                           "--target-key-env", "WRONG_KEY", "--folder", tmp_path/"wrong-key", "--max-steps", "2")
    assert rc == 1 and "HTTP 401" in err and "the target rejected the key: set $WRONG_KEY" in err and len(err.strip().splitlines()) == 1
    rc, out, err = run_cli("migrate", "ftjob-nope", "--base-url", src.base_url, "--folder", tmp_path/"nope")
    assert rc == 1 and "cannot read source job 'ftjob-nope'" in err and "`finetune-nb jobs`" in err and "list_jobs()" not in err
    assert not (tmp_path/"nope").exists()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-nope")
    rc, out, err = run_cli("archive", "--out", tmp_path/"bad-key", "--base-url", src.base_url)
    assert rc == 1 and "HTTP 401" in err and "the source rejected the key: set $OPENAI_API_KEY" in err and not (tmp_path/"bad-key").exists()
    monkeypatch.setenv("OPENAI_API_KEY", SRC_KEY)
    assert target_jobs(tgt) == []

    # 3. migrate --all, interrupted (Ctrl-C) while the second job trains on the target
    args = ("migrate", "--all", "--base-url", src.base_url, "--archive", A, "--folder", F, "--target-url", tgt.base_url,
            "--max-steps", "2", "--eval-limit", "3", "--max-tokens", "12")
    real_wait, calls = OpenAIFineTuner.wait_for_completion, []
    def wait_then_ctrl_c(self, job_id, *a, **kw):
        calls.append(str(job_id))
        if len(calls) == 2: raise KeyboardInterrupt
        return real_wait(self, job_id, *a, **kw)
    monkeypatch.setattr(OpenAIFineTuner, "wait_for_completion", wait_then_ctrl_c)
    rc, out, err = run_cli(*args)
    assert rc == 130 and "interrupted" in err
    monkeypatch.setattr(OpenAIFineTuner, "wait_for_completion", real_wait)
    fleet = json.loads((F/"fleet.json").read_text())["jobs"]
    assert fleet[jobs["triage"].job_id]["status"] == "migrated" and fleet[jobs["legal"].job_id]["status"] == "pending"
    assert len(target_jobs(tgt)) == 2 and "(interrupted)" in (F/"fleet-report.md").read_text()
    started = json.loads((F/jobs["legal"].job_id/"state.json").read_text())["partial"]["train"]["job_id"]
    assert started == calls[1]

    # 4. the re-run finishes the rest without a second target job
    rc, res, err = cli_json(*args)
    assert rc == 0, err[-2000:]
    assert "[migrate]" in err                               # progress lines went to stderr
    assert len(target_jobs(tgt)) == 2    # the re-run waited for the job created before Ctrl-C instead of starting another
    assert json.loads((F/jobs["legal"].job_id/"state.json").read_text())["steps"]["train"]["job_id"] == started
    assert {r["job_id"] for r in res["migrated"]} == {jobs["triage"].job_id, jobs["legal"].job_id}
    assert res["skipped"] == [{"job_id": jobs["gone"].job_id, "status": "cancelled", "reason": "cancelled: only a succeeded job has a model to migrate"}]
    report = (F/"fleet-report.md").read_text()
    assert report.startswith("# Fleet migration: 2 of 3 jobs migrated") and f"| {jobs['gone'].job_id} | cancelled | cancelled: only a succeeded job" in report
    rows = {r["job_id"]: r for r in res["migrated"]}
    for name in ("triage", "legal"):
        r = rows[jobs[name].job_id]
        assert r["alias"] == name and r["source_model"] == jobs[name].fine_tuned_model and r["local_model"].startswith("ft:finetune-nb/tiny:")
        assert r["verdict"] in ("better", "worse", "equal within CI") and len(r["ci95"]) == 2 and r["trained_tokens"] > 0
        assert f"| {r['job_id']} | `{r['source_model']}` | `{r['local_model']}` | `{name}` | {r['verdict']} (" in report
        folder = F/r["job_id"]
        st = json.loads((folder/"state.json").read_text())["steps"]
        assert st["source"]["read_from"] == "archive" and all(f["from"] == "archive" for f in st["source"]["files"].values())
        assert (folder/"source"/"train.jsonl").read_bytes() == Path(data[name][0]).read_bytes()
        settings = st["plan"]["settings"]
        assert {s["from"] for s in settings.values()} <= set(SETTING_SOURCES)
        assert settings["max_steps"]["from"] == "override" and settings["epochs"]["from"] == "source job"
        assert settings["lr"]["from"] == "documented mapping" and settings["lr_scheduler"]["from"] == "base model recipe"
        assert any(d.startswith("max_steps=2") for d in st["plan"]["differences"])
        rep = (folder/"report.md").read_text()
        assert "## Training settings" in rep and "## Differences from the source job" in rep and "| lr_scheduler | `'cosine'` | base model recipe" in rep
    # the aliases answer for the migrated models, with the target's key
    q = [{"role": "user", "content": "My card was charged twice!"}]
    c = tgt.client(TGT_KEY)
    via = c.chat.completions.create(model="legal", messages=q, max_tokens=8, temperature=0).choices[0].message.content
    direct = c.chat.completions.create(model=rows[jobs["legal"].job_id]["local_model"], messages=q, max_tokens=8, temperature=0)
    assert via == direct.choices[0].message.content

    # 5. a second run of both commands changes nothing
    manifest, fleet_state = (A/"manifest.json").read_bytes(), (F/"fleet.json").read_bytes()
    rc, ar2, _ = cli_json("archive", "--out", A, "--base-url", src.base_url, "--quiet")
    assert rc == 0 and ar2["changed"] is False and ar2["new_jobs"] == ar2["new_files"] == [] and (A/"manifest.json").read_bytes() == manifest
    rc, res2, _ = cli_json(*args)
    assert rc == 0 and res2 == res and (F/"fleet.json").read_bytes() == fleet_state and len(target_jobs(tgt)) == 2

    # 6. every command with --json prints one JSON document
    rc, one, _ = cli_json("migrate", jobs["triage"].job_id, "--base-url", src.base_url, "--archive", A, "--folder", F/jobs["triage"].job_id,
                          "--target-url", tgt.base_url, "--alias", "triage")
    assert rc == 0 and one["local_model"] == rows[jobs["triage"].job_id]["local_model"] and len(target_jobs(tgt)) == 2
    rc, listed, _ = cli_json("jobs", "--base-url", src.base_url)
    assert rc == 0 and {j["id"] for j in listed} == set(man["jobs"])
    f = data["triage"][0]
    assert cli_json("validate", f)[1]["stats"]["n_examples"] == 24 and cli_json("stats", f)[1]["n_examples"] == 24
    assert cli_json("split", f, "--out-dir", tmp_path/"split")[1]["n_train"] > 0
    assert cli_json("dedupe", f, "--out", tmp_path/"dedup.jsonl")[1]["n_out"] == 24
    rc, tr, err = cli_json("train", f, "--max-steps", "1", "--batch-size", "4", "--grad-accum", "1", "--output-dir", tmp_path/"train")
    assert rc == 0 and tr["steps"] == 1, err[-2000:]


def test_every_json_command_is_covered():
    "The test above runs every command that has --json; a new one must be added there."
    from finetune_nb.cli import COMMANDS
    has_json = {n for n, (f, extra) in COMMANDS.items() if "json" in f.__code__.co_varnames[:f.__code__.co_argcount]
                or "as_json" in f.__code__.co_varnames[:f.__code__.co_argcount]}
    # `export --json` prints the written paths only after a real GGUF conversion, which needs llama.cpp: it is not run here
    # (the default suite has no llama-cpp-python); its error path is tests/test_engines.py's
    assert has_json == {"validate", "stats", "split", "dedupe", "train", "migrate", "archive", "jobs", "export"}
