"Jobs on a Ray cluster (issue 18): a server with `FINETUNE_NB_JOB_EXECUTOR=ray` trains each job as a Ray Train run."
import importlib.util, os, subprocess, sys, time
from pathlib import Path
import pytest

pytest.importorskip("ray.train", reason="Ray Train is not installed (pip install 'finetune_nb[ray]')")
from fixtures_serve import check_tracked_in_wandb, offline_wandb_env

# a few steps on short examples, logged every 2 steps; a high learning rate so the model visibly changes
HP = {"n_epochs": 1, "batch_size": 2, "learning_rate_multiplier": 25, "max_steps": 8, "max_length": 384, "logging_steps": 2, "save_steps": 4}
RAY_ENV = {"FINETUNE_NB_JOB_EXECUTOR": "ray", "FINETUNE_NB_RAY_WORKERS": "2"}
TERMINAL = ("succeeded", "failed", "cancelled")


def watch_job(c, job_id, timeout=600):
    "Poll until the job ends; also return whether a metrics event was visible while the job was still running."
    t0, live = time.time(), False
    while True:
        ev = list(c.fine_tuning.jobs.list_events(job_id, limit=100))
        j = c.fine_tuning.jobs.retrieve(job_id)   # after the events: a metrics event seen with status running came while training
        live = live or (j.status == "running" and any(e.type == "metrics" for e in ev))
        if j.status in TERMINAL: return j, live
        assert time.time() - t0 < timeout, f"job {job_id} still {j.status} after {timeout}s"
        time.sleep(0.3)


# in make test (issue 18). Quiet box: ~60 s from job start to training (Ray start, Ray Train's controller, coordinator and
# synchronization actors, two workers importing torch), ~3 s of training; CI's full run is slower (2 pytest workers beside it)
def test_ray_job_two_workers(start_server, tmp_path):
    from finetune_nb.demo import write_demo_files, make_demo_data
    wandb_env = offline_wandb_env(tmp_path) if importlib.util.find_spec("wandb") else {}
    srv = start_server("ray", env={**RAY_ENV, **wandb_env})
    c = srv.client()
    base = next(m.id for m in c.models.list() if "tiny" in m.id)
    f = c.files.create(file=open(write_demo_files(tmp_path/"demo", n_train=24, n_test=2, seed=5)["train"], "rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model=base, training_file=f.id, suffix="ray", seed=7, hyperparameters=HP,
                                    integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    done, live = watch_job(c, job.id)
    assert done.status == "succeeded", (done.error, srv.read_log())
    assert done.fine_tuned_model == f"ft:{base}:ray:{job.id}" and done.trained_tokens > 0
    events = list(c.fine_tuning.jobs.list_events(job.id, limit=100))
    assert [e.data for e in events if (e.data or {}).get("executor")] == [{"executor": "ray", "world_size": 2}]
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics][::-1] == [2, 4, 6, 8] and all(e.data["train_loss"] > 0 for e in metrics)
    assert live, "no metrics event arrived while the Ray run was training"
    assert sorted(ck.step_number for ck in c.fine_tuning.jobs.checkpoints.list(job.id)) == [4, 8]
    if wandb_env:   # OpenAI's wandb integration on Ray: the server logs the workers' metrics into the job's one run
        check_tracked_in_wandb(Path(wandb_env["WANDB_DIR"]), done, [e.message for e in events], keys=("train_loss",))
    # the model trained on Ray serves like any other, and it changed
    _, test = make_demo_data(n_train=1, n_test=2, seed=11)
    prompts = [[m for m in r["messages"] if m["role"] != "assistant"] for r in test]
    ask = lambda model, p: c.chat.completions.create(model=model, messages=p, max_tokens=16, temperature=0).choices[0].message.content
    ft_out = [ask(done.fine_tuned_model, p) for p in prompts]
    assert all(isinstance(o, str) and o for o in ft_out) and ft_out != [ask(base, p) for p in prompts]


def test_bad_executor_stops_the_server_at_start(tmp_path):
    "A bad executor setting is a clear error at start (naming the variable), not a failure of the first job."
    from finetune_nb.core import ConfigError
    from finetune_nb.serve import Service
    for env, name in (({"FINETUNE_NB_JOB_EXECUTOR": "slurm"}, "FINETUNE_NB_JOB_EXECUTOR"),
                      ({"FINETUNE_NB_JOB_EXECUTOR": "ray", "FINETUNE_NB_RAY_WORKERS": "two"}, "FINETUNE_NB_RAY_WORKERS")):
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items(): mp.setenv(k, v)
            with pytest.raises(ConfigError, match=name): Service(data_dir=tmp_path/"d", run_jobs=False)


def test_local_executor_does_not_import_ray(tmp_path):
    code = ("import sys; from finetune_nb.serve import Service; s = Service(data_dir=sys.argv[1], run_jobs=False); "
            "assert s.jobs.executor.kind == 'local'; print('ray' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_NB_JOB_EXECUTOR", "FINETUNE_NB_RAY_"))}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path/"d")], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_ray_job_cancel_stops_the_run(start_server, tmp_path):
    "Cancelling a running Ray job stops its workers after their current step (they save a checkpoint), and the server still shuts down promptly."
    from finetune_nb.demo import write_demo_files
    srv = start_server("ray-cancel", env=RAY_ENV)
    c = srv.client()
    base = next(m.id for m in c.models.list() if "tiny" in m.id)
    f = c.files.create(file=open(write_demo_files(tmp_path/"demo", n_train=24, n_test=2, seed=5)["train"], "rb"), purpose="fine-tune")
    long = {**HP, "max_steps": 2000, "save_steps": 5000}
    job = c.fine_tuning.jobs.create(model=base, training_file=f.id, hyperparameters=long)
    t0 = time.time()
    while not any(e.type == "metrics" for e in c.fine_tuning.jobs.list_events(job.id, limit=100)):
        assert c.fine_tuning.jobs.retrieve(job.id).status in ("queued", "running") and time.time() - t0 < 600, srv.read_log()
        time.sleep(0.5)
    assert c.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    t0 = time.time()
    while not (cks := list(c.fine_tuning.jobs.checkpoints.list(job.id))):   # the stop reached the workers: they saved and ended
        assert time.time() - t0 < 180, srv.read_log()
        time.sleep(0.5)
    assert len(cks) == 1 and 0 < cks[0].step_number < 2000
    assert c.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    srv.proc.terminate()
    assert srv.proc.wait(60) is not None
