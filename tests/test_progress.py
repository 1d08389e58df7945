"""Progress where a person waits, one home for a run, clean interrupts: `finetune-nb run local` (the path `make demo` takes)
in a subprocess, read line by line as a user's terminal would see it."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import nbformat
import pytest

CLI = str(Path(sys.executable).parent/"finetune-nb")
SMALL = ["-p", "n_train", "48", "-p", "n_test", "6", "-p", "eval_limit", "6", "-p", "max_new_tokens", "8", "-p", "batch_size", "4",
         "-p", "max_length", "384", "-p", "logging_steps", "1"]


def _foreground_signals():
    "In the child: SIGINT as a terminal's foreground job has it. A job started in the background by a non-interactive shell (as CI may run the suite) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."
    signal.signal(signal.SIGINT, signal.SIG_DFL)

def _start(cwd:Path, *args:str)->subprocess.Popen:
    return subprocess.Popen([CLI, "run", "local", *SMALL, *args, "--runs-dir", str(cwd/"runs")], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, bufsize=1, preexec_fn=_foreground_signals)


def test_run_shows_progress_every_10s(tmp_path, ux_base_model):
    "A liveness check, not a speed one: no silence over 10 s between stdout lines, the run folder named first, every code cell reported."
    p = _start(tmp_path, "-p", "base_model", ux_base_model, "-p", "max_steps", "4")
    stamps = []
    for line in p.stdout: stamps.append((time.monotonic(), line.rstrip("\n")))
    err = p.stderr.read(); p.wait(timeout=60)
    assert p.returncode == 0, err[-3000:]
    lines = [l for _, l in stamps]
    run_dir = tmp_path/"runs"/"local"
    assert f"run folder: {run_dir}" in lines[0] and "tail -f" in lines[0]
    gaps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) <= 10, max(zip(gaps, lines[1:]))
    nb = nbformat.read(str(run_dir/"finetune_local.ipynb"), as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for i in code: assert any(f"cell {i + 1}/{len(nb.cells)}:" in l for l in lines), i
    assert json.loads((run_dir/"status.json").read_text())["status"] == "succeeded"
    live = json.loads((run_dir/"train"/"progress.json").read_text())   # the trainer's live file, which the heartbeat reads while it trains
    assert (live["status"], live["step"], live["max_steps"]) == ("done", 4, 4) and live["loss"] > 0
    assert (run_dir/"progress.log").read_text().splitlines()[0] == lines[0]
    # the executed notebook keeps its plots inline: the token histogram and the report's figures
    pngs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(set(pngs)) >= 2 and len(pngs) >= 3, pngs
    widgets = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not widgets                                                             # no stale progress-bar widgets saved
    assert not [f for f in os.listdir(tmp_path) if f.startswith("kernel")]      # no stray kernel socket files in the cwd


def test_ctrl_c_is_one_line_and_marks_the_run(tmp_path, ux_base_model):
    p = _start(tmp_path, "-p", "base_model", ux_base_model, "-p", "max_steps", "400")
    for line in p.stdout:
        if "LocalFineTuner" in line: break                     # the training cell started
    time.sleep(2)
    os.killpg(p.pid, signal.SIGINT)                            # what Ctrl-C sends: the whole foreground process group
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert err.strip().splitlines() == ["finetune-nb run: interrupted"], err[-3000:]
    st = json.loads((tmp_path/"runs"/"local"/"status.json").read_text())
    assert st["status"] == "interrupted" and "LocalFineTuner" in st["step"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("kernel")]


def test_wrong_base_model_offline_fails_fast(tmp_path, monkeypatch):
    "A name that is no folder, no tiny model and not in the cache: the kernel runs with HF_HUB_OFFLINE, so the clear error comes at once."
    from finetune_nb.cli import _offline_unless_cached
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert _offline_unless_cached({"base_model": "no-such-org/no-such-model"}) == {"HF_HUB_OFFLINE": "1"}
    assert _offline_unless_cached({"base_model": "finetune-nb/tiny"}) == {}
    assert _offline_unless_cached({"base_model": str(tmp_path)}) == {}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")                  # an explicit choice is kept
    assert _offline_unless_cached({"base_model": "no-such-org/no-such-model"}) == {}
