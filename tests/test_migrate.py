"Migration end to end between two loopback finetune_nb servers (one plays OpenAI), plus every bad-input stop."
import dataclasses, json
from pathlib import Path
import pytest
from finetune_nb.migrate import Migration, MigrationError, migrate, MigrationState
from finetune_nb.openai_ft import OpenAIFineTuner
from finetune_nb.data import write_openai_jsonl

STEPS = 20  # enough for the tiny model to learn the JSON format; keeps the test short

@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from finetune_nb.demo import make_demo_data
    train, test = make_demo_data(n_train=200, n_test=40, seed=3)
    d = tmp_path_factory.mktemp("migrate-data")
    return write_openai_jsonl(train, d/"train.jsonl"), write_openai_jsonl(test[:24], d/"valid.jsonl")

def source_job(server, files, steps=STEPS)->tuple:
    "A succeeded fine-tuning job on the 'OpenAI' server, created through the OpenAI-compatible API."
    ft = OpenAIFineTuner(base_url=server.base_url, api_key="no-key")
    run = ft.fine_tune(files[0], model="finetune-nb/tiny", validation_data=files[1], suffix="triage", seed=7,
                       hyperparameters={"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 2.0, "max_steps": steps},
                       poll_interval=0.5, timeout=600, progress=False)
    assert run.job.status == "succeeded"
    return ft, run.job

@pytest.fixture(scope="module")
def openai_srv(module_server): return module_server("openai")   # plays OpenAI for the module's tests

@pytest.fixture(scope="module")
def source(openai_srv, demo_files): return source_job(openai_srv, demo_files)

def test_migration_between_two_servers(start_server, openai_srv, source, demo_files, tmp_path):
    local_srv = start_server("local")
    src, job = source
    folder = tmp_path/"mig"
    res = migrate(job.job_id, src, target="finetune-nb/tiny", target_url=local_srv.base_url, alias="support-triage",
                  folder=folder, eval_limit=8, max_tokens=40, overrides={"max_steps": STEPS}, poll_interval=0.5)
    assert res.verdict in ("better", "worse", "equal within CI")
    report = res.report.read_text()
    assert f"**Verdict: {res.verdict}**" in report and job.fine_tuned_model in report and res.local_model in report
    assert (folder/"eval"/"metrics.json").exists() and (folder/"eval"/"bars.png").stat().st_size > 1000
    st = json.loads((folder/"state.json").read_text())["steps"]
    assert list(st) == ["source", "plan", "train", "evaluate", "deploy"]
    assert st["plan"]["hyperparameters"]["openai"]["learning_rate_multiplier"] == 2.0
    assert (folder/"source"/"train.jsonl").read_bytes() == Path(demo_files[0]).read_bytes()
    # the alias the application uses now serves the migrated model
    c = local_srv.client()
    q = [{"role": "user", "content": "My card was charged twice and I am furious, fix it now!"}]
    via_alias = c.chat.completions.create(model="support-triage", messages=q, max_tokens=40, temperature=0)
    direct = c.chat.completions.create(model=res.local_model, messages=q, max_tokens=40, temperature=0)
    assert res.local_model.startswith("ft:") and via_alias.choices[0].message.content == direct.choices[0].message.content
    # a re-run (here through the papermill pipeline, on the same folder) pays nothing twice: no new job, same verdict
    from finetune_nb.cli import run_pipeline
    n_jobs = len(OpenAIFineTuner(base_url=local_srv.base_url).list_jobs())
    (tmp_path/"runs"/"mig").mkdir(parents=True); (tmp_path/"runs"/"mig"/"migration").symlink_to(folder)
    run = run_pipeline("migrate", {"job_id": job.job_id, "source_base_url": openai_srv.base_url, "target_url": local_srv.base_url,
                                   "alias": "support-triage"}, name="mig", runs_dir=tmp_path/"runs")
    m = json.loads((run/"metrics.json").read_text())
    assert m["verdict"] == res.verdict and m["local_model"] == res.local_model and (run/"migrate.ipynb").exists()
    assert len(OpenAIFineTuner(base_url=local_srv.base_url).list_jobs()) == n_jobs

def test_bad_inputs_stop_clearly_and_stay_resumable(openai_srv, source, demo_files, tmp_path):
    srv, (ft, job) = openai_srv, source
    with pytest.raises(MigrationError, match="cannot read source job 'ftjob-doesnotexist'"):
        migrate("ftjob-doesnotexist", ft, folder=tmp_path/"a")
    # a job that never succeeded
    j = ft.create_job(ft.upload_file(demo_files[0]).id, model="finetune-nb/tiny", hyperparameters={"max_steps": 5000})
    ft.cancel_job(j.job_id)
    with pytest.raises(MigrationError, match=r"is 'cancelled'.*only a succeeded job"):
        migrate(j.job_id, ft, folder=tmp_path/"b")
    # files that fail validation: the downloaded file is broken by hand, then fixed; the re-run continues
    m = Migration(job.job_id, "finetune-nb/tiny", folder=tmp_path/"c", source=ft)
    m._step_source()
    p = tmp_path/"c"/"source"/"train.jsonl"; good = p.read_bytes()
    lines = good.splitlines(); lines[4] = b'{"messages": [{"role": "robot", "content": "x"}]}'; p.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(MigrationError, match=r"(?s)train file has 2 validation error\(s\).*train\.jsonl:5: messages\[0\]\.role"):
        Migration(job.job_id, "finetune-nb/tiny", folder=tmp_path/"c", source=ft)._step_plan()
    p.write_bytes(good)
    m2 = Migration(job.job_id, "finetune-nb/tiny", folder=tmp_path/"c", source=ft)
    assert m2.state.done("source") and m2._step_plan()["n_train"] == 200
    # a target base model that cannot be loaded (in-process target)
    bad = Migration(job.job_id, str(tmp_path/"no-such-model"), folder=tmp_path/"d", source=ft)
    with pytest.raises(MigrationError, match="cannot be loaded"): bad.run()
    st = MigrationState(tmp_path/"d")
    assert st.done("source") and st.done("plan") and not st.done("train")

def test_cli_migrate_unknown_job_is_one_clear_line(fake_openai, tmp_path):
    from finetune_nb.cli import run_cli
    rc, out, err = run_cli("migrate", "ftjob-nope", "--to", "finetune-nb/tiny", "--base-url", fake_openai.base_url, "--folder", str(tmp_path/"m"))
    assert rc != 0 and "cannot read source job 'ftjob-nope'" in err
    assert not (tmp_path/"m").exists()   # a run that fails before its first result leaves no empty folder

def test_hyperparameter_mapping_matches_the_server():
    "What a migration plans is what a finetune_nb server trains when sent the same hyperparameters (recipe settings included)."
    from finetune_nb.migrate import plan_training
    from finetune_nb.lora import TrainingConfig
    for base_model in ("some/hf-model", "finetune-nb/tiny"):
        tc, base = plan_training({"n_epochs": 2, "batch_size": 24, "learning_rate_multiplier": 1.5}, 300, base_model, max_length=256)
        assert (tc.epochs, tc.batch_size * tc.grad_accum, tc.max_length) == (2, 24, 256)
        assert abs(tc.lr - (base.lr if base else 2e-4) * 1.5) < 1e-12
        assert TrainingConfig.from_openai(tc.to_openai(), seed=tc.seed) == tc   # the mapping round-trips (the seed travels as the job's own field)
        from finetune_nb.serve.jobs import check_hyperparameters, training_configs
        _, served = training_configs(check_hyperparameters(tc.to_openai()), n_examples=300, seed=tc.seed)
        assert served == dataclasses.replace(tc, progress=False)                    # ... and the server trains exactly that

def test_dpo_job_migrates_with_its_method_and_beta(fake_openai, toy_model_dir, tmp_path):
    "An OpenAI DPO job: beta and the three knobs through the one mapping, pairs trained with DPO locally, prompts evaluated side by side."
    from finetune_nb.demo import make_demo_data, demo_preferences
    train, test = make_demo_data(24, 8, seed=4)
    ft = OpenAIFineTuner(base_url=fake_openai.base_url, api_key="sk-test")
    run = ft.fine_tune(demo_preferences(train), validation_data=demo_preferences(test + train[:2]), method="dpo", beta=0.3, seed=5,
                       hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2}, poll_interval=0.001, progress=False)
    answers = {r["messages"][1]["content"]: r["messages"][-1]["content"] for r in test + train}
    fake_openai.chat_reply = lambda req: answers.get(req["messages"][-1]["content"], "?")
    folder = tmp_path/"mig"
    res = migrate(run.job.job_id, ft, target=toy_model_dir, folder=folder, eval_limit=4, max_tokens=8, overrides={"max_steps": 2, "max_length": 384})
    st = json.loads((folder/"state.json").read_text())["steps"]
    src, plan, tr = st["source"], st["plan"], st["train"]
    assert src["job_method"] == "dpo" and src["hyperparameters"]["beta"] == 0.3
    assert (plan["job_method"], plan["training"]["objective"], plan["training"]["beta"], plan["training"]["epochs"]) == ("dpo", "dpo", 0.3, 2)
    assert plan["hyperparameters"]["openai"]["beta"] == 0.3 and plan["settings"]["beta"]["from"] == "source job"
    assert plan["training"]["batch_size"] * plan["training"]["grad_accum"] == 4 and abs(plan["training"]["lr"] - 2 * 2e-4) < 1e-12
    assert tr["steps"] == 2 and any("rewards/margins" in h for h in tr["loss_history"]) and (Path(tr["adapter"])/"adapter_config.json").exists()
    held = [json.loads(l) for l in Path(plan["eval_chat_path"]).read_text().splitlines()]
    assert len(held) == 10 and all(r["messages"][-1]["role"] == "assistant" for r in held)   # the prompts with their preferred answers
    assert st["evaluate"]["overall"]["n"] == 4 and res.verdict in ("better", "worse", "equal within CI")
    assert "| method | DPO, beta 0.3 | DPO (TRL), beta 0.3 |" in (folder/"report.md").read_text()


def test_a_refused_hyperparameter_is_recognised_flat_or_inside_a_method():
    "The drop-and-retry knows `hyperparameters.X` and a DPO job's `method.dpo.hyperparameters.X`; nothing else is taken for one."
    from finetune_nb.migrate import _rejected_param
    class Answer400(Exception): body = None
    def refused(param):
        cause = Answer400("400"); cause.body = {"param": param}
        e = Exception("refused"); e.__cause__ = cause; return e
    assert _rejected_param(refused("hyperparameters.lora_r")) == "lora_r"
    assert _rejected_param(refused("method.dpo.hyperparameters.beta")) == "beta"
    assert _rejected_param(refused("method.supervised.hyperparameters.lora_alpha")) == "lora_alpha"
    for other in ("training_file", "method.dpo", "hyperparameters", "hyperparameters.a.b", None):
        assert _rejected_param(refused(other)) is None
