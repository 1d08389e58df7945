"The `finetune-nb` command line: exit codes, JSON output, file conversions, the demo, the console script."
import json, os, subprocess, sys
from pathlib import Path

import pytest

from finetune_nb.cli import main, run_cli, make_parser, COMMANDS

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent/"finetune-nb"


def rec(i, extra=""):
    return {"messages": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": f"question {i}{extra}"},
                         {"role": "assistant", "content": f"answer {i}"}]}


@pytest.fixture
def good_file(tmp_path):
    p = tmp_path/"good.jsonl"
    p.write_text("".join(json.dumps(rec(i)) + "\n" for i in range(15)))
    return p


@pytest.fixture
def bad_file(tmp_path):
    "Bad lines at known places: 3 invalid JSON, 5 unrecognized role, 8 no assistant, 11 exact duplicate of 1."
    lines = [json.dumps(rec(i)) for i in range(15)]
    lines[2] = '{"messages": [}'
    lines[4] = json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]})
    lines[7] = json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
    lines[10] = lines[0]
    p = tmp_path/"bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_validate_good_exit_0(good_file):
    rc, out, err = run_cli("validate", good_file)
    assert rc == 0, err
    assert "15 valid examples, 0 errors, 0 warnings" in out


def test_validate_bad_json_contract(bad_file):
    rc, out, err = run_cli("validate", bad_file, "--json")
    assert rc == 1
    d = json.loads(out)
    assert list(d) == ["errors", "warnings", "stats"]
    for i in d["errors"] + d["warnings"]: assert set(i) == {"line", "field", "kind", "message"}
    assert [(e["line"], e["kind"]) for e in d["errors"]] == [(3, "invalid_json"), (5, "unrecognized_role"), (8, "no_assistant_message")]
    assert [(w["line"], w["kind"]) for w in d["warnings"]] == [(11, "duplicate")]
    assert d["stats"]["n_lines"] == 15 and d["stats"]["n_examples"] == 11


def test_validate_human_output_names_lines(bad_file):
    rc, out, _ = run_cli("validate", bad_file)
    assert rc == 1
    errs = [l for l in out.splitlines() if l.startswith("error:")]
    assert len(errs) == 3 and f"{bad_file}:5: messages[0].role" in errs[1]


def test_validate_usage_errors_exit_2(tmp_path, good_file):
    rc, out, err = run_cli("validate", tmp_path/"nope.jsonl")
    assert rc == 2 and err.strip() == f"finetune-nb validate: error: {tmp_path/'nope.jsonl'}: no such file"
    assert run_cli("validate", good_file, "--format", "csv")[0] == 2
    assert run_cli("validate")[0] == 2
    assert run_cli("validate", tmp_path)[0] == 2       # a directory is not a data file
    assert run_cli("no-such-command")[0] == 2


def test_validate_alpaca_and_sharegpt(tmp_path):
    alp = tmp_path/"a.json"
    alp.write_text(json.dumps([{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(10)]
                              + [{"instruction": "no output"}]))
    rc, out, _ = run_cli("validate", alp, "--format", "alpaca", "--json")
    d = json.loads(out)
    # a JSON array's issues name the line the record starts on and, first in the field, its index in the array
    assert rc == 1 and [(e["line"], e["field"], e["kind"]) for e in d["errors"]] == [(1, "[10].output", "bad_record")]
    sg = tmp_path/"s.jsonl"
    sg.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}) + "\n"
                          for i in range(10)))
    rc, out, _ = run_cli("validate", sg, "--json")       # format detected
    assert rc == 0 and json.loads(out)["stats"]["n_examples"] == 10


def test_stats_json_and_text(good_file):
    rc, out, _ = run_cli("stats", good_file, "--json")
    s = json.loads(out)
    assert rc == 0 and s["n_examples"] == 15 and s["tokens_min"] > 0 and s["cost"]["n_epochs"] == 6  # OpenAI's rule: 100 // 15
    rc, out, _ = run_cli("stats", good_file)
    assert "examples            15" in out and f"× {s['cost']['n_epochs']} epochs" in out


def test_convert_round_trip(tmp_path, good_file):
    a, b = tmp_path/"x.alpaca.json", tmp_path/"back.jsonl"
    assert run_cli("convert", good_file, a, "--to", "alpaca")[0] == 0
    assert json.loads(a.read_text())[0] == {"instruction": "question 0", "input": "", "output": "answer 0", "system": "Answer briefly."}
    assert run_cli("convert", a, b, "--from", "alpaca")[0] == 0
    assert [json.loads(l) for l in b.read_text().splitlines()] == [rec(i) for i in range(15)]


def test_convert_refuses_what_alpaca_cannot_hold(tmp_path):
    "Alpaca holds multi-turn chats (in `history`) but not weighted turns: refused, one line, nothing written."
    multi = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    src = tmp_path/"m.jsonl"; src.write_text(json.dumps(multi) + "\n")
    rc, out, err = run_cli("convert", src, tmp_path/"m.json", "--to", "alpaca")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "cannot be expressed in Alpaca" in err
    assert not (tmp_path/"m.json").exists()


def test_split_reproducible(tmp_path, good_file):
    outs = []
    for sub, seed in (("a", 1), ("b", 1), ("c", 2)):
        rc, out, _ = run_cli("split", good_file, "--out-dir", tmp_path/sub, "--seed", seed, "--val-frac", "0.2", "--json")
        r = json.loads(out)
        assert rc == 0 and (r["n_train"], r["n_val"]) == (12, 3)
        outs.append(Path(r["val"]).read_text())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    assert run_cli("split", good_file, "--val-frac", "1")[0] == 2


def test_demo_preflight(tmp_path):
    rc, out, err = run_cli("demo", "--out-dir", tmp_path, "--n-train", "100", "--n-test", "10", "--val-frac", "0.2", "--no-train")
    assert rc == 0, err
    assert "examples            100 (of 100 records)" in out and "estimated cost" in out and "tokens per example" in out
    tr, va = (tmp_path/"train.jsonl").read_text().splitlines(), (tmp_path/"val.jsonl").read_text().splitlines()
    assert (len(tr), len(va)) == (80, 20)
    ans = json.loads(json.loads(tr[0])["messages"][-1]["content"])
    assert set(ans) == {"category", "priority", "sentiment"}


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    "The whole `make demo`: pre-flight, split, then the local pipeline on the embedded tiny model; the printed numbers match the report."
    rc, out, err = run_cli("demo", "--out-dir", tmp_path/"data", "--runs-dir", tmp_path/"runs")
    assert rc == 0, err[-3000:]
    m = json.loads((tmp_path/"runs"/"demo"/"metrics.json").read_text())
    o = m["headline"]["overall"]
    assert f"overall              base {o['base']:.3f}  →  fine-tuned {o['fine_tuned']:.3f}" in out
    assert f"Overall score: {o['base']:.3f} → {o['fine_tuned']:.3f}" in (tmp_path/"runs"/"demo"/"report.md").read_text()


def test_help_comes_from_docments():
    p = make_parser()
    assert {"validate", "convert", "stats", "split", "demo", "serve", "run"} <= set(COMMANDS)
    rc, out, _ = run_cli("split", "--help")
    assert rc == 0 and "fraction held out for validation (default: 0.1)" in out and "makes the split reproducible" in out


def test_console_script(bad_file, tmp_path):
    "The installed `finetune-nb` script: real exit statuses and a one-line reason on stderr."
    assert EXE.exists(), f"console script missing at {EXE}: run `make install`"
    r = subprocess.run([str(EXE), "validate", str(bad_file), "--json"], capture_output=True, text=True)
    assert r.returncode == 1 and len(json.loads(r.stdout)["errors"]) == 3
    r = subprocess.run([str(EXE), "validate", str(tmp_path/"missing.jsonl")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    r = subprocess.run([str(EXE), "validate", "--bogus", str(bad_file)], capture_output=True, text=True)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_train_then_eval_local(tmp_path, ux_base_model):
    "`train` saves an adapter after the asked-for steps; `eval` loads base + adapter and writes a report it summarises."
    data = tmp_path/"d.jsonl"
    data.write_text("".join(json.dumps(rec(i)) + "\n" for i in range(16)))
    rc, out, err = run_cli("train", data, "--base-model", ux_base_model, "--max-steps", "2", "--batch-size", "4", "--grad-accum", "1",
                           "--lr", "1e-3", "--output-dir", tmp_path/"run", "--json")
    assert rc == 0, err[-2000:]
    res = json.loads(out.strip().splitlines()[-1])
    assert res["steps"] == 2 and (Path(res["adapter_dir"])/"adapter_config.json").exists()
    rc, out, err = run_cli("eval", data, "--base-model", ux_base_model, "--adapter", res["adapter_dir"], "--limit", "3",
                           "--max-tokens", "4", "--out-dir", tmp_path/"rep")
    assert rc == 0, err[-2000:]
    m = json.loads((tmp_path/"rep"/"metrics.json").read_text())["summary"]
    assert m["n_examples"] == 3 and f"exact_match            base {m['metrics']['exact_match']['base']['mean']:.3f}" in out


def test_eval_through_an_api(tmp_path, fake_openai):
    fake_openai.chat_reply = lambda req: "answer 1" if req["model"] == "ft:x" else "nope"
    data = tmp_path/"d.jsonl"
    data.write_text("".join(json.dumps(rec(i)) + "\n" for i in range(4)))
    rc, out, err = run_cli("eval", data, "--base-url", fake_openai.base_url, "--base-model", "gpt-4o-mini", "--fine-tuned-model", "ft:x",
                           "--out-dir", tmp_path/"rep")
    assert rc == 0, err
    em = json.loads((tmp_path/"rep"/"metrics.json").read_text())["summary"]["metrics"]["exact_match"]
    assert (em["base"]["mean"], em["fine_tuned"]["mean"]) == (0.0, 0.25)   # only "answer 1" is right
    assert run_cli("eval", data, "--base-url", fake_openai.base_url)[0] == 2   # needs --fine-tuned-model


def test_eval_report_goes_to_the_runs_home_by_default(tmp_path, fake_openai, monkeypatch):
    "Without --out-dir the report lands with the other runs (<data dir>/runs/eval-<file stem>), not in the working directory."
    fake_openai.chat_reply = lambda req: "answer 1"
    data = tmp_path/"held.jsonl"
    data.write_text("".join(json.dumps(rec(i)) + "\n" for i in range(2)))
    monkeypatch.setenv("FINETUNE_NB_DATA_DIR", str(tmp_path/"data")); monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli("eval", data, "--base-url", fake_openai.base_url, "--fine-tuned-model", "ft:x")
    assert rc == 0, err
    assert (tmp_path/"data"/"runs"/"eval-held"/"metrics.json").exists() and not (tmp_path/"eval-report").exists()
    assert f"report: {tmp_path/'data'/'runs'/'eval-held'/'report.md'}" in out


def test_headline_lines_name_the_runs_own_before_and_after(tmp_path):
    "A DPO run says SFT → SFT → DPO, not base → fine-tuned; a run without labels keeps base/fine-tuned."
    from finetune_nb.cli import headline_lines
    (tmp_path/"metrics.json").write_text(json.dumps({"headline": {"overall": {"base": 0.5, "fine_tuned": 0.75}},
                                                     "labels": {"base": "SFT", "fine_tuned": "SFT → DPO"}}))
    assert headline_lines(tmp_path)[-1].split() == ["overall", "SFT", "0.500", "→", "SFT", "→", "DPO", "0.750"]
    (tmp_path/"metrics.json").write_text(json.dumps({"headline": {"overall": {"base": 0.5, "fine_tuned": 0.75}}}))
    assert headline_lines(tmp_path)[-1].split() == ["overall", "base", "0.500", "→", "fine-tuned", "0.750"]
