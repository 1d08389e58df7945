"The server's fine-tuning flow end to end with the official openai SDK: upload, train, events, chat, aliases, restart."
import importlib.util, json, time
from pathlib import Path
import httpx, openai, pytest
from fixtures_serve import check_tracked_in_wandb, offline_wandb_env

KEY = "sk-serve-flow-12345678"
# tiny and fast: a few optimizer steps on short examples; a high learning rate so the model visibly changes
HP = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 25, "max_steps": 8, "max_length": 384, "logging_steps": 2, "save_steps": 4}
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def flow_srv(tmp_path_factory, serve_base_model):
    "One keyed server shared by this module's tests that don't restart it."
    from fixtures_serve import ServerProc
    d = tmp_path_factory.mktemp("flow-server")
    env = {"FINETUNE_NB_MLFLOW_URI": f"sqlite:///{d/'mlflow.db'}"} if importlib.util.find_spec("mlflow") else {}   # every job tracked (tests/test_tracking.py)
    if importlib.util.find_spec("wandb"): env.update(offline_wandb_env(d))
    p = ServerProc(d, serve_base_model, KEY, env=env).start()
    yield p
    p.stop()


def wait_job(c, job_id, timeout=240, until=TERMINAL):
    t0 = time.time()
    while True:
        j = c.fine_tuning.jobs.retrieve(job_id)
        if j.status in until: return j
        assert time.time() - t0 < timeout, f"job {job_id} still {j.status} after {timeout}s"
        time.sleep(0.5)


def demo_files(tmp_path, n_train=40):
    from finetune_nb.demo import write_demo_files
    return write_demo_files(tmp_path/"demo", n_train=n_train, n_test=4, seed=5)


def check_tracked_in_mlflow(uri:str, job, metrics:list, msgs:list):
    "With FINETUNE_NB_MLFLOW_URI, a job has one finished MLflow run named by its id, holding its params and the losses of its metrics events."
    from mlflow import MlflowClient
    m = MlflowClient(tracking_uri=uri)
    runs = m.search_runs([m.get_experiment_by_name("finetune-nb").experiment_id], filter_string=f"attributes.run_name = '{job.id}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = sorted((e.data["step"], e.data["train_loss"]) for e in metrics)
    hist = sorted((p.step, p.value) for p in m.get_metric_history(runs[0].info.run_id, "train_loss"))
    assert len(hist) >= 2 and [s for s, _ in hist] == [s for s, _ in steps]
    assert [v for _, v in hist] == pytest.approx([v for _, v in steps], rel=1e-6)   # the same losses as the job's metrics events
    params = runs[0].data.params
    assert params["training.max_steps"] == str(HP["max_steps"]) and params["lora.r"] == "8" and params["fine_tuned_model"] == job.fine_tuned_model
    assert any(f"MLflow run {runs[0].info.run_id}" in x for x in msgs)


def test_full_flow(flow_srv, tmp_path):
    srv = flow_srv
    c = srv.client()
    base = next(m.id for m in c.models.list() if "tiny" in m.id)
    paths = demo_files(tmp_path)
    f = c.files.create(file=open(paths["train"], "rb"), purpose="fine-tune")
    assert f.status == "processed" and f.filename == "demo_train.jsonl"
    with pytest.raises(openai.BadRequestError, match="integrations"):   # of OpenAI's integrations, only the wandb shape is accepted
        c.fine_tuning.jobs.create(model=base, training_file=f.id, integrations=[{"type": "slack", "wandb": {"project": "p"}}])
    job = c.fine_tuning.jobs.create(model=base, training_file=f.id, suffix="demo", seed=7, hyperparameters=HP,
                                    integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["t"]}}])
    assert job.status == "queued" and job.model == base and job.seed == 7
    assert [i.type for i in job.integrations] == ["wandb"] and job.integrations[0].wandb.project == "p"
    # a second job, cancelled while it waits behind the first
    job2 = c.fine_tuning.jobs.create(model=base, training_file=f.id, hyperparameters=HP)
    assert c.fine_tuning.jobs.cancel(job2.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError): c.fine_tuning.jobs.cancel(job2.id)
    page = c.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [job2.id] and page.has_more
    assert [j.id for j in c.fine_tuning.jobs.list(limit=2)] == [job2.id, job.id]
    # watch events while it trains
    done = wait_job(c, job.id)
    assert done.status == "succeeded", (done.error, srv.read_log())
    assert done.fine_tuned_model == f"ft:{base}:demo:{job.id}" and done.trained_tokens > 0 and done.finished_at >= done.created_at
    assert done.hyperparameters.n_epochs == 1 and done.hyperparameters.batch_size == 4 and done.hyperparameters.learning_rate_multiplier == 25
    events = list(c.fine_tuning.jobs.list_events(job.id, limit=100))
    msgs = [e.message for e in events]
    assert msgs[0] == "The job has successfully completed" and msgs[-1].startswith("Validating training file")
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics][::-1] == [2, 4, 6, 8]
    assert all(isinstance(e.data["train_loss"], float) and e.data["train_loss"] > 0 for e in metrics)
    if importlib.util.find_spec("wandb") is None:   # not installed here: a warn event says the integration was skipped, and why
        assert any(e.level == "warn" and "Weights & Biases integration skipped: wandb is not installed" in e.message for e in events), msgs
    else: check_tracked_in_wandb(Path(srv.env["WANDB_DIR"]), done, msgs)
    if srv.env.get("FINETUNE_NB_MLFLOW_URI"): check_tracked_in_mlflow(srv.env["FINETUNE_NB_MLFLOW_URI"], done, metrics, msgs)
    p1 = c.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(p1.data) == 3 and p1.has_more and c.fine_tuning.jobs.list_events(job.id, limit=3, after=p1.data[-1].id).data[0].id == events[3].id
    cks = list(c.fine_tuning.jobs.checkpoints.list(job.id))
    assert sorted(ck.step_number for ck in cks) == [4, 8] and all(ck.fine_tuned_model_checkpoint.startswith(done.fine_tuned_model + ":ckpt-step-") for ck in cks)
    # the result file: OpenAI's step_metrics.csv columns, one row per logged step
    rf = c.files.retrieve(done.result_files[0])
    assert rf.purpose == "fine-tune-results"
    rows = c.files.content(rf.id).text.strip().splitlines()
    assert rows[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6", "8"]
    # chat with the fine-tuned model, plain and streamed; it differs from the base model
    from finetune_nb.demo import make_demo_data
    _, test = make_demo_data(n_train=1, n_test=3, seed=11)
    prompts = [[m for m in r["messages"] if m["role"] != "assistant"] for r in test]
    ask = lambda model, p: c.chat.completions.create(model=model, messages=p, max_tokens=24, temperature=0).choices[0].message.content
    ft_out, base_out = [ask(done.fine_tuned_model, p) for p in prompts], [ask(base, p) for p in prompts]
    assert ft_out != base_out
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model=done.fine_tuned_model, messages=prompts[0], max_tokens=24, temperature=0, stream=True) if ch.choices)
    assert streamed == ft_out[0]
    assert done.fine_tuned_model in [m.id for m in c.models.list()]
    ck_out = ask(cks[0].fine_tuned_model_checkpoint, prompts[0])   # checkpoints are servable models too
    assert isinstance(ck_out, str)
    # deploy an alias, use the seed's inference endpoint, swap the alias
    h = {"Authorization": f"Bearer {KEY}"}
    dep = lambda model: httpx.post(srv.url + "/v1/fine-tune/deploy", headers=h, json={"alias": "support", "model": model}).json()
    inf = lambda: httpx.post(srv.url + "/v1/fine-tune/inference", headers=h, json={"alias": "support", "messages": prompts[0], "max_tokens": 24, "temperature": 0}).json()
    assert dep(base)["version"] == 1 and inf()["output"] == base_out[0]
    assert dep(done.fine_tuned_model)["version"] == 2
    r = inf()
    assert r["output"] == ft_out[0] and r["model"] == done.fine_tuned_model and r["usage"]["completion_tokens"] > 0
    assert ask("support", prompts[0]) == ft_out[0]
    # the seed's job endpoints
    sj = httpx.post(srv.url + "/v1/fine-tune/jobs", headers=h, json={"base_model": base, "training_file": f.id, "hyperparameters": HP}).json()
    assert sj["job_id"].startswith("ftjob-") and sj["status"] == "queued"
    assert httpx.get(srv.url + f"/v1/fine-tune/jobs/{sj['job_id']}", headers=h).json()["job_id"] == sj["job_id"]
    c.fine_tuning.jobs.cancel(sj["job_id"])


def test_restart_mid_job(start_server, tmp_path):
    "SIGKILL the server while a job trains; after a restart the job resumes from its checkpoint (or fails with a reason), and nothing is lost."
    state = tmp_path/"state"
    srv = start_server("r1", state_dir=state)
    c = srv.client()
    base = next(m.id for m in c.models.list() if "tiny" in m.id)
    f = c.files.create(file=open(demo_files(tmp_path, n_train=20)["train"], "rb"), purpose="fine-tune")
    hp = {**HP, "max_steps": 8, "save_steps": 2, "logging_steps": 1, "batch_size": 2}
    job = c.fine_tuning.jobs.create(model=base, training_file=f.id, hyperparameters=hp, suffix="resume")
    queued = c.fine_tuning.jobs.create(model=base, training_file=f.id, hyperparameters={**HP, "max_steps": 1, "save_steps": 100})
    httpx.post(srv.url + "/v1/fine-tune/deploy", json={"alias": "keep", "model": base}).raise_for_status()
    t0 = time.time()
    while not list(c.fine_tuning.jobs.checkpoints.list(job.id)):   # a checkpoint exists: kill now
        assert time.time() - t0 < 180, srv.read_log()
        assert c.fine_tuning.jobs.retrieve(job.id).status in ("queued", "running")
        time.sleep(0.2)
    srv.kill()
    srv2 = start_server("r2", state_dir=state)
    c2 = srv2.client()
    assert [x.id for x in c2.files.list()] == [f.id]   # (killed mid-job: no result file yet)
    assert {j.id for j in c2.fine_tuning.jobs.list()} == {job.id, queued.id}
    assert httpx.get(srv2.url + "/v1/fine-tune/models").json()["aliases"][0]["alias"] == "keep"
    j = wait_job(c2, job.id, timeout=300)
    msgs = [e.message for e in c2.fine_tuning.jobs.list_events(job.id, limit=200)]
    print("after restart:", j.status, j.error)
    if j.status == "succeeded":
        assert any("resume" in m for m in msgs), msgs
        assert c2.chat.completions.create(model=j.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=4).choices
    else:
        assert j.status == "failed" and j.error.message, j
    assert wait_job(c2, queued.id).status == "succeeded"   # the queued job ran after the restart


def test_openai_fine_tuner_against_server(flow_srv):
    "The OpenAI client class works unchanged against this server (only base_url differs)."
    from finetune_nb.openai_ft import OpenAIFineTuner
    srv = flow_srv
    base = next(m.id for m in srv.client().models.list() if "tiny" in m.id)
    from finetune_nb.demo import make_demo_data
    train, _ = make_demo_data(n_train=24, n_test=0, seed=2)
    ft = OpenAIFineTuner(base_url=srv.base_url, api_key=KEY)
    run = ft.fine_tune(train, model=base, hyperparameters={**HP, "max_steps": 4}, suffix="oft", poll_interval=0.5, timeout=240, progress=False)
    assert run.job.status == "succeeded" and run.job.fine_tuned_model == f"ft:{base}:oft:{run.job.job_id}"
    m = ft.download_metrics(run.job)
    assert len(m) == 2 and all(v > 0 for v in m["train_loss"])
    assert "The job has successfully completed" in [e.message for e in ft.list_events(run.job.job_id)]


def test_prompt_consistency(flow_srv, serve_base_model):
    "The prompt the server builds for a conversation is exactly what the trainer trained on (same template, same special tokens)."
    from finetune_nb.models import load_model
    from finetune_nb.infer import build_prompt
    from finetune_nb.lora import tokenize_conversation
    _, tok = load_model(serve_base_model, device="cpu")
    from finetune_nb.demo import make_demo_data
    rec = make_demo_data(n_train=1, n_test=0, seed=9)[0][0]
    msgs = rec["messages"]
    enc = tokenize_conversation(tok, msgs, max_length=2048)
    first_label = next(i for i, l in enumerate(enc["labels"]) if l != -100)
    prompt_ids = tok(build_prompt(tok, msgs[:-1]), add_special_tokens=False)["input_ids"]
    assert list(enc["input_ids"][:first_label]) == prompt_ids        # the trained-on prefix == the inference prompt
    trained = [l for l in enc["labels"] if l != -100]
    assert trained[-1] == tok.eos_token_id                           # and the answer ends with EOS, where generation stops
    r = flow_srv.client().chat.completions.create(model=serve_base_model, messages=msgs[:-1], max_tokens=1, temperature=0)
    assert r.usage.prompt_tokens == len(prompt_ids)                 # the server fed exactly that prompt
