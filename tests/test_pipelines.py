"""Papermill pipelines, run through `finetune-nb run` with small parameters: the local one on a toy model, the OpenAI one
against a loopback fake of the API. Each run folder must hold everything needed to reproduce it."""
import json, re
from pathlib import Path

import nbformat
import pytest

from finetune_nb.cli import run_cli, headline_lines


def _check_run_folder(run_dir:Path, nb_name:str, params:dict):
    p = json.loads((run_dir/"params.json").read_text())
    for k, v in params.items(): assert p[k] == v, (k, p[k], v)          # the parameters cell kept its tag
    env = json.loads((run_dir/"env.json").read_text())
    assert env["packages"]["finetune_nb"] and env["packages"]["torch"] and env["device"]
    nb = nbformat.read(str(run_dir/nb_name), as_version=4)
    assert any(c.metadata.get("tags") == ["injected-parameters"] for c in nb.cells)
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")   # every cell ran
    m = json.loads((run_dir/"metrics.json").read_text())
    report = (run_dir/"report.md").read_text()
    o = m["headline"]["overall"]
    assert f"Overall score: {o['base']:.3f} → {o['fine_tuned']:.3f}" in report      # the report matches metrics.json
    assert (run_dir/"bars.png").read_bytes()[:4] == b"\x89PNG" and (run_dir/"results.jsonl").exists()
    return m


def test_local_pipeline(tmp_path, ux_base_model):
    params = dict(base_model=ux_base_model, n_train=48, n_test=6, max_steps=4, eval_limit=6, max_new_tokens=8,
                  max_length=384, logging_steps=1, batch_size=4, seed=3)
    args = [x for k, v in params.items() for x in ("-p", k, json.dumps(v) if not isinstance(v, str) else v)]
    rc, out, err = run_cli("run", "local", *args, "--name", "tiny-run", "--runs-dir", tmp_path, "--quiet")
    assert rc == 0, err[-3000:]
    run_dir = tmp_path/"tiny-run"
    m = _check_run_folder(run_dir, "finetune_local.ipynb", params)
    p = json.loads((run_dir/"params.json").read_text())
    assert (p["method"], p["lr"], p["lr_scheduler"], p["warmup"], p["epochs"]) == ("lora", 2e-3, "linear", 0.03, 1.0)   # left at None: triage defaults
    assert m["train"]["steps"] == 4 and len(m["loss_history"]) >= 4
    assert all(h["loss"] > 0 for h in m["loss_history"] if h.get("loss") is not None)
    assert (Path(m["train"]["adapter_dir"])/"adapter_config.json").exists()
    assert m["n_test"] == 6 and (run_dir/"data"/"demo_train.jsonl").exists() and (run_dir/"plots"/"tokens.png").exists()
    assert f"report:  {run_dir/'report.md'}" in out and "overall" in out
    if "tensorboard" in __import__("transformers.integrations.integration_utils", fromlist=["x"]).get_available_reporting_integrations():
        assert list((run_dir/"train"/"tensorboard").glob("events.out.tfevents.*"))   # report_to="auto": TensorBoard in the run folder


@pytest.mark.parametrize("method", ["full", pytest.param("lora", marks=pytest.mark.slow)])   # LoRA DPO: also tests/test_dpo.py (suite time)
def test_dpo_pipeline_sft_then_dpo(tmp_path, ux_base_model, method):
    "SFT → DPO on demo preference pairs with tiny settings (full, the default, and LoRA): the run folder, the preference section and both saved models."
    params = dict(base_model=ux_base_model, method=method, n_train=24, n_test=6, sft_steps=2, sft_batch_size=4, steps=2, eval_limit=6, max_new_tokens=8,
                  max_length=384, logging_steps=1, batch_size=4, beta=0.2, seed=3, report_to="none")
    args = [x for k, v in params.items() for x in ("-p", k, json.dumps(v) if not isinstance(v, str) else v)]
    rc, out, err = run_cli("run", "dpo", *args, "--name", "tiny-dpo", "--runs-dir", tmp_path, "--quiet")
    assert rc == 0, err[-3000:]
    run_dir = tmp_path/"tiny-dpo"
    m = _check_run_folder(run_dir, "finetune_dpo.ipynb", params)
    assert m["train"]["steps"] == 2 and m["train"]["objective"] == "dpo" and m["train"]["method"] == method and len(m["sft_loss_history"]) >= 2
    saved = "config.json" if method == "full" else "adapter_config.json"   # a full model folder, or an adapter
    assert (Path(m["sft_adapter"])/saved).exists() and (Path(m["train"]["adapter_dir"])/saved).exists()
    assert any("rewards/margins" in h for h in m["loss_history"])
    pref = m["preference"]
    assert pref["before"]["n"] == pref["after"]["n"] == 6 and pref["beta"] == 0.2
    assert (pref["before"]["accuracy"], pref["before"]["margin"]) == (0.0, 0.0)   # before DPO the implicit reward is zero for every answer
    assert m["headline"]["preference_accuracy"] == {"base": pref["before"]["logp_accuracy"], "fine_tuned": pref["after"]["logp_accuracy"]}
    report = (run_dir/"report.md").read_text()
    assert "## Preference accuracy (held-out pairs)" in report and f"| mean reward margin | 0.000 | {pref['after']['margin']:.3f} |" in report
    assert (run_dir/"preference.png").read_bytes()[:4] == b"\x89PNG" and (run_dir/"data"/"pairs_train.jsonl").exists()
    assert "preference_accuracy" in out and "SFT" in (run_dir/"report.md").read_text().splitlines()[0]
    assert not list(run_dir.rglob("events.out.tfevents.*"))   # report_to="none" reached both trainers


@pytest.mark.slow
def test_dpo_demo_goal(tmp_path, tiny_model_path):
    "Issue 16's goal, `finetune-nb run dpo` with its defaults on the embedded tiny model (about 7 min on 2 cores): held-out preference accuracy ≤ 0.6 after the short SFT, ≥ 0.90 after DPO, and exact match of generated verdicts above the SFT's."
    rc, out, err = run_cli("run", "dpo", "--name", "goal", "--runs-dir", tmp_path, "--quiet")
    assert rc == 0, err[-3000:]
    h = json.loads((tmp_path/"goal"/"metrics.json").read_text())["headline"]
    assert h["preference_accuracy"]["base"] <= 0.6 and h["preference_accuracy"]["fine_tuned"] >= 0.90, h
    assert h["exact_match"]["fine_tuned"] > h["exact_match"]["base"], h


def test_local_pipeline_tools_task(tmp_path, tiny_model_path):
    "`-p task tools`: the tool demo's data, its recipe for the parameters left at None, and the tool-call metrics in metrics.json and the report."
    from finetune_nb.demo import demo_recipe, make_tool_demo_data
    from finetune_nb.evaluate import TOOL_METRICS
    params = dict(task="tools", n_train=24, n_test=3, max_steps=2, eval_limit=3, max_new_tokens=4, batch_size=4, logging_steps=1)
    args = [x for k, v in params.items() for x in ("-p", k, json.dumps(v) if not isinstance(v, str) else v)]
    rc, out, err = run_cli("run", "local", *args, "--name", "tools-run", "--runs-dir", tmp_path, "--quiet")
    assert rc == 0, err[-3000:]
    run_dir = tmp_path/"tools-run"
    m = _check_run_folder(run_dir, "finetune_local.ipynb", params)
    r, p = demo_recipe("tools"), json.loads((run_dir/"params.json").read_text())
    for k, v in {**r["training"], **r["eval"]}.items():                                   # parameters not given: the tools recipe's
        if k in p and k not in params: assert p[k] == v, (k, p[k], v)
    assert p["method"] == "full" and p["epochs"] == r["training"].get("epochs") and p["lr_scheduler"] == r["training"]["lr_scheduler"]
    assert m["train"]["steps"] == 2 and m["n_test"] == 3
    assert [json.loads(l) for l in (run_dir/"data"/"demo_tools_test.jsonl").read_text().splitlines()] == make_tool_demo_data(24, 3, 0)[1]
    for k in TOOL_METRICS: assert k in m["summary"]["metrics"] and k in m["headline"], k
    rows = [json.loads(l) for l in (run_dir/"results.jsonl").read_text().splitlines()]
    assert all(json.loads(row["base"]["expected"])["tool_calls"][0]["name"] in {"create_ticket", "escalate_to_human", "track_parcel"} for row in rows)
    assert "tool_call_exact_match" in (run_dir/"report.md").read_text() and "tool_call_exact_match" in out


def test_run_help_lists_the_task_parameter():
    rc, out, _ = run_cli("run", "local", "--help")
    assert rc == 0 and re.search(r"^  task +\"triage\" +bundled demo task", out, re.M), out[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(3600)   # 1,000 CPU training steps: about 21 min on 2 busy cores
def test_tools_demo_meets_its_goal(tmp_path, tiny_model_path):
    "`finetune-nb run local -p task tools` with its defaults: whole-call exact match >= 0.90 fine-tuned, <= 0.10 base, on held-out examples."
    rc, out, err = run_cli("run", "local", "-p", "task", "tools", "--name", "tools", "--runs-dir", tmp_path, "--quiet")
    assert rc == 0, err[-3000:]
    m = json.loads((tmp_path/"tools"/"metrics.json").read_text())
    h = m["headline"]["tool_call_exact_match"]
    assert m["n_test"] >= 100 and h["fine_tuned"] >= 0.90 and h["base"] <= 0.10, h


def test_openai_pipeline_against_loopback(tmp_path, fake_openai, capfd):
    "The fine-tuned model (per the fake) answers every test ticket right, the base never does."
    from finetune_nb.demo import make_demo_data
    n_train, n_test, seed = 60, 8, 5
    _, test = make_demo_data(n_train, n_test, seed)
    answers = {r["messages"][-2]["content"]: r["messages"][-1]["content"] for r in test}
    fake_openai.chat_reply = lambda req: (answers.get(req["messages"][-1]["content"], "?") if req["model"].startswith("ft:")
                                          else "Sorry, I cannot help with that.")
    params = dict(base_url=fake_openai.base_url, n_train=n_train, n_test=n_test, seed=seed, poll_interval=0.01, val_frac=0.2,
                  eval_limit=n_test, n_epochs=2, suffix="triage")
    args = [x for k, v in params.items() for x in ("-p", k, json.dumps(v) if not isinstance(v, str) else v)]
    rc, out, err = run_cli("run", "openai", *args, "--runs-dir", tmp_path, "--quiet")
    assert rc == 0, err[-3000:]
    run_dir = tmp_path/"openai"
    m = _check_run_folder(run_dir, "finetune_openai.ipynb", params)
    assert m["job"]["status"] == "succeeded" and ":triage:" in m["job"]["fine_tuned_model"]
    assert m["job"]["hyperparameters"]["n_epochs"] == 2
    assert m["headline"]["exact_match"] == {"base": 0.0, "fine_tuned": 1.0}
    assert m["headline"]["json_valid"] == {"base": 0.0, "fine_tuned": 1.0}
    assert fake_openai.count("POST", "/v1/files") == 2                    # train + validation (>= 10 examples)
    assert len(fake_openai.chat_requests) == 2 * n_test
    assert len(m["loss_history"]) == fake_openai.n_steps and (run_dir/"plots"/"training_metrics.png").exists()
    assert "exact_match          base 0.000  →  fine-tuned 1.000" in out
    assert "without encryption" not in capfd.readouterr().err   # the kernel listens on local sockets, not plain TCP


@pytest.mark.slow   # the one-line-error path is covered fast in test_cli; this checks it through a failing kernel
def test_pipeline_failure_is_one_line(tmp_path, fake_openai):
    fake_openai.fail("/v1/files", status=400, message="bad file")
    rc, out, err = run_cli("run", "openai", "-p", "base_url", fake_openai.base_url, "-p", "n_train", "20", "-p", "n_test", "4",
                           "--runs-dir", tmp_path, "--quiet")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "failed in cell" in err and "RemoteError" in err
    assert (tmp_path/"openai"/"finetune_openai.ipynb").exists()          # the failed notebook is kept to look at


def test_run_param_parsing_and_bad_pipeline(tmp_path):
    assert run_cli("run", tmp_path/"nope.ipynb")[0] == 2
    rc, out, err = run_cli("run", "local", "-p", "epochs")                # -p needs KEY VALUE
    assert rc == 2


@pytest.mark.slow
def test_local_pipeline_reproducible(tmp_path, ux_base_model):
    "Same parameters and seed on the same machine: the same loss history and the same metrics."
    args = ["-p", "base_model", ux_base_model, "-p", "n_train", "32", "-p", "n_test", "4", "-p", "max_steps", "3",
            "-p", "eval_limit", "4", "-p", "max_new_tokens", "8", "-p", "logging_steps", "1", "-p", "seed", "7"]
    ms = []
    for name in ("a", "b"):
        rc, out, err = run_cli("run", "local", *args, "--name", name, "--runs-dir", tmp_path, "--quiet")
        assert rc == 0, err[-2000:]
        ms.append(json.loads((tmp_path/name/"metrics.json").read_text()))
    assert ms[0]["headline"] == ms[1]["headline"]
    assert [h.get("loss") for h in ms[0]["loss_history"]] == [h.get("loss") for h in ms[1]["loss_history"]]


def test_pipeline_notebooks_are_not_run_by_nbdev_test():
    "`nbdev_test` (in `make test`) must skip the pipelines: run with their defaults they are the full demos (the DPO one took 186 s, and its example copy 47 s more); the tests here run them with small parameters."
    root = Path(__file__).resolve().parent.parent/"nbs"/"pipelines"
    found = sorted(root.glob("*.ipynb")) + sorted((root/"examples").glob("*.ipynb"))
    assert len(found) >= 8
    front = lambda p: nbformat.read(str(p), as_version=4).cells[0]
    missing = [p.relative_to(root).as_posix() for p in found if not (front(p).cell_type == "raw" and re.search(r"^skip_exec:\s*true$", front(p).source, re.M))]
    assert not missing, f"add a first raw cell `---\\nskip_exec: true\\n---` to {missing}"
