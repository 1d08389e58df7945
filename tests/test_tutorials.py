"""The front door runs top to bottom: `nbs/index.ipynb` and the five tutorials, executed with papermill in a fresh kernel
(as a Colab user or a batch job would), hold their plots and headline numbers. The tutorials share one working folder, so
they run in their order with small parameters. The index runs in the default suite; the tutorials are `slow` (minutes)."""
import json, re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT/"nbs"/"tutorials"


@pytest.fixture(autouse=True)
def _inline_plots(monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)   # the suite's Agg would reach the kernel; Jupyter and Colab plot inline


def _execute(nb:Path, out:Path, **params)->nbformat.NotebookNode:
    import papermill as pm
    pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3", cwd=str(out.parent), progress_bar=False,
                        log_output=False, execution_timeout=900)
    return nbformat.read(str(out), as_version=4)


def _outputs(nb)->tuple[list[str], int]:
    "(every stdout line, number of PNG images) of an executed notebook; fails on an error output or a cell that didn't run."
    lines, pngs = [], 0
    for c in nb.cells:
        if c.cell_type != "code": continue
        assert c.get("execution_count"), f"a cell did not run: {c.source[:80]!r}"
        for o in c.outputs:
            assert o.output_type != "error", f"{o.get('ename')}: {o.get('evalue')}"
            if o.output_type == "stream" and o.name == "stdout": lines += o.text.splitlines()
            pngs += "image/png" in o.get("data", {})
    return lines, pngs


def _headline(lines:list[str])->list[str]:
    found = [l for l in lines if l.startswith("headline: ")]
    assert found, lines[-20:]
    return found


def test_index_runs_top_to_bottom(tmp_path):
    lines, pngs = _outputs(_execute(ROOT/"nbs"/"index.ipynb", tmp_path/"index.ipynb"))
    assert pngs >= 1
    assert any(re.match(r"\s*examples\s+\d+", l) for l in lines) and any("tokens per example" in l for l in lines)   # the stats table


@pytest.mark.slow   # 84 s in CI's full run: the suite is past its 15-minute budget; `make test-slow` runs it
def test_tutorials_prepare_finetune_evaluate(tmp_path):
    "Tutorials 1-3 in order on one working folder: data written and checked, an adapter trained, base vs fine-tuned scored."
    work = tmp_path/"work"
    lines, pngs = _outputs(_execute(TUTORIALS/"1_prepare.ipynb", tmp_path/"1.ipynb", work_dir=str(work), n_train=80, n_test=6))
    assert pngs >= 1 and _headline(lines) == ["headline: 80 examples, 0 errors"]
    assert any(l.startswith("bad.jsonl:4: unrecognized_role") for l in lines)            # the broken file's problems, by line
    assert "ShareGPT round trip: 80 records, identical: True" in lines
    assert (work/"data"/"train.jsonl").exists() and (work/"data"/"val.jsonl").exists()

    lines, pngs = _outputs(_execute(TUTORIALS/"2_finetune.ipynb", tmp_path/"2.ipynb", work_dir=str(work), steps=20))
    (h,) = _headline(lines)
    first, last = map(float, re.fullmatch(r"headline: training loss ([\d.]+) → ([\d.]+), validation loss [\d.]+", h).groups())
    trained = json.loads((work/"finetune"/"train_result.json").read_text())
    assert pngs >= 1 and last < first and trained["method"] == "full" and trained["steps"] == 20
    assert (Path(trained["adapter_dir"])/"model.safetensors").exists()

    lines, pngs = _outputs(_execute(TUTORIALS/"3_evaluate.ipynb", tmp_path/"3.ipynb", work_dir=str(work), eval_limit=4))
    scores = {m[1]: (float(m[2]), float(m[3])) for l in _headline(lines)
              if (m := re.fullmatch(r"headline: (\w+)\s+base ([\d.]+) → fine-tuned ([\d.]+)", l))}
    assert set(scores) == {"exact_match", "json_valid", "json_field_accuracy"} and pngs >= 2
    assert all(0 <= v <= 1 for pair in scores.values() for v in pair)
    assert (work/"evaluation"/"report.md").exists()


@pytest.mark.slow
def test_tutorials_deploy_and_migrate(tmp_path):
    "Tutorials 4-5: a server started in the notebook trains, deploys and chats; a job on a stand-in account migrates with a verdict."
    work = tmp_path/"work"
    _outputs(_execute(TUTORIALS/"1_prepare.ipynb", tmp_path/"1.ipynb", work_dir=str(work), n_train=60, n_test=6))
    lines, pngs = _outputs(_execute(TUTORIALS/"4_deploy.ipynb", tmp_path/"4.ipynb", work_dir=str(work), n_epochs=1))   # 60 examples: 4 steps
    assert pngs >= 1 and re.fullmatch(r"headline: job succeeded, model ft:finetune-nb/tiny:triage:ftjob-\w+", _headline(lines)[0])
    assert any(l.startswith("200 {'alias': 'triage'") for l in lines) and any(l.startswith("reply: ") for l in lines)
    lines, pngs = _outputs(_execute(TUTORIALS/"5_migrate.ipynb", tmp_path/"5.ipynb", work_dir=str(work), n_epochs=1, eval_limit=4, max_steps=4))
    assert pngs >= 1 and re.match(r"headline: verdict (better|worse|equal)", _headline(lines)[0])
    assert (work/"migration"/"report.md").exists()
