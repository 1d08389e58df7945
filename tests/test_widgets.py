"Widgets: constructed on real data and a real (loopback) fine-tuning API, driven through their callbacks."
import json, math, time
from pathlib import Path

import pytest

from finetune_nb.widgets import DatasetBrowser, LossCurve, JobMonitor, CompareView, metric_points, compare_rows
from finetune_nb.data import ChatDataset

PNG = b"\x89PNG"


def rec(i, role="user"):
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": role, "content": f"question number {i}"},
                         {"role": "assistant", "content": f"answer {i}"}]}


@pytest.fixture
def messy_file(tmp_path):
    "15 lines: 2 invalid JSON, 5 bad role, 9 no assistant, 14 exact duplicate of line 1."
    lines = [json.dumps(rec(i)) for i in range(15)]
    lines[1] = '{"messages": ['
    lines[4] = json.dumps(rec(4, role="robot"))
    lines[8] = json.dumps({"messages": [{"role": "user", "content": "hello?"}]})
    lines[13] = lines[0]
    p = tmp_path/"messy.jsonl"; p.write_text("\n".join(lines) + "\n")
    return p


def test_browser_pages_and_filters(messy_file):
    b = DatasetBrowser(messy_file, page_size=6)
    assert b.visible == [1, 2, 3, 4, 5, 6] and b.n_pages == 3 and b.prev_btn.disabled
    b.next_btn.click(); b.next_btn.click()
    assert b.visible == [13, 14, 15] and b.next_btn.disabled and b.page_label.value == "page 3 / 3 (15 shown)"
    b.kind.value = "errors"                                    # the dropdown's observer re-filters, back to page 1
    assert b.page == 0 and b.visible == [2, 5, 9]
    assert "robot" in b.body.value and "line 2" in b.body.value and "invalid_json" in b.body.value
    b.kind.value = "duplicate"
    assert b.visible == [14] and "exact duplicate of line 1" in b.body.value
    labels = dict((v, k) for k, v in b.kind.options)
    assert labels["errors"] == "with errors (3)" and labels["unrecognized_role"] == "unrecognized_role (1)"
    b.set_filter("all"); b.goto(99)
    assert b.page == 2                                         # clamped
    assert b.wait().histogram.value[:4] == PNG and len(b.token_counts) == 12   # 3 bad lines excluded from the histogram


def test_browser_in_memory_and_alpaca(tmp_path):
    b = DatasetBrowser(ChatDataset.from_records([rec(i) for i in range(12)]), page_size=5)
    assert b.report.ok and b.n_pages == 3 and b.visible == [1, 2, 3, 4, 5] and "question number 0" in b.body.value
    a = tmp_path/"a.json"
    a.write_text(json.dumps([{"instruction": f"do {i}", "input": "", "output": f"done {i}"} for i in range(10)]))
    b = DatasetBrowser(a, page_size=20)
    assert b.visible == list(range(1, 11)) and "done 9" in b.body.value and b.report.ok


def test_loss_curve_as_trainer_callback():
    c = LossCurve(every=2)
    for s in range(1, 6): c({"step": s, "epoch": s / 5, "loss": 3.0 / s, "learning_rate": 1e-4})
    c({"step": 5, "epoch": 1.0, "eval_loss": 0.7})
    c({"step": 6, "learning_rate": 0.0})                       # no loss: ignored
    assert [h["step"] for h in c.history] == [1, 2, 3, 4, 5, 5]
    assert c.image.value[:4] == PNG and c.label.value == "step 5: eval_loss 0.7000"


def test_metric_points_from_events():
    evs = [{"type": "message", "data": None, "message": "started"},
           {"type": "metrics", "data": {"step": 2, "train_loss": 1.5, "valid_loss": 1.7}},
           {"type": "metrics", "data": {"step": 1, "train_loss": 2.0}}]
    assert metric_points(evs) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}]


@pytest.fixture
def tuner(fake_openai):
    from finetune_nb.openai_ft import OpenAIFineTuner
    return OpenAIFineTuner(base_url=fake_openai.base_url, api_key="sk-test-widgets", backoff=0.01, sleep=lambda s: None)


def _job(tuner, n=12):
    return tuner.fine_tune([rec(i) for i in range(n)], wait=False, progress=False, poll_interval=0.01).job


def test_job_monitor_follows_a_job_to_success(tuner, fake_openai):
    job = _job(tuner)
    m = JobMonitor(job, tuner, poll_interval=0.01)
    m.refresh()
    assert m.job.status != "succeeded" and not m.cancel_btn.disabled and job.job_id in m.status.value
    m.start(); m._thread.join(30)                               # the background poller stops when the job ends
    assert m.job.status == "succeeded" and m.cancel_btn.disabled and "succeeded" in m.status.value
    losses = [e for e in fake_openai.events[job.job_id] if e["type"] == "metrics"]
    assert [h["loss"] for h in m.curve.history] == [e["data"]["train_loss"] for e in losses] and len(losses) == fake_openai.n_steps
    assert m.curve.image.value[:4] == PNG
    assert "The job has successfully completed" in m.event_log.value


def test_job_monitor_cancel_button(tuner, fake_openai):
    job = _job(tuner)
    m = JobMonitor(job.job_id, tuner)
    m.refresh()
    m.cancel_btn.click(); m.pending.join(timeout=30)                # the click runs in the background: the notebook never waits
    assert m.job.status == "cancelled" and m.cancel_btn.disabled
    assert fake_openai.jobs[job.job_id]["obj"]["status"] == "cancelled"


def test_job_monitor_shows_api_errors(tuner, fake_openai):
    job = _job(tuner)
    m = JobMonitor(job, tuner)
    fake_openai.fail(f"/v1/fine_tuning/jobs/{job.job_id}", status=500)
    m.refresh()                                                 # does not raise: the widget shows the failure
    assert m.error and "HTTP 500" in m.status.value
    fake_openai.rules.clear()
    m.refresh()
    assert m.error is None and "HTTP 500" not in m.status.value


def test_compare_view_with_real_evaluator(fake_openai):
    "Comparisons from the real FineTuneEvaluator over HTTP: base answers badly, fine-tuned copies the label."
    import openai
    from finetune_nb.evaluate import FineTuneEvaluator
    expected = {f"ticket {i}": json.dumps({"category": ["billing", "technical"][i % 2]}) for i in range(6)}
    def reply(req):
        user = req["messages"][-1]["content"]
        if req["model"] == "base": return "I think it is billing" if user not in ("ticket 3", "ticket 5") else expected[user]
        return expected[user] if user != "ticket 3" else "??"
    fake_openai.chat_reply = reply
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    data = [{"messages": [{"role": "user", "content": k}, {"role": "assistant", "content": v}]} for k, v in expected.items()]
    ev = FineTuneEvaluator(client, client, "base", "ft", concurrency=2, progress=False)
    results = ev.evaluate_dataset(data)
    cv = CompareView(results, summary=ev.summary(n_boot=200))
    assert dict((v, k) for k, v in cv.filter.options)["fine-tuned better"] == "fine-tuned better (4)"
    cv.filter.value = "base better"
    assert cv.matching == [3] and "ticket 3" in cv.body.value and "??" in cv.body.value
    cv.set_filter("same"); assert cv.matching == [5]
    cv.set_filter("fine-tuned better"); cv.next_btn.click(); cv.next_btn.click()
    assert cv.current["prompt"] == "[user] ticket 2" and cv.pos.value == "3 / 4 (example 2)"
    assert "exact_match" in cv.body.value and "wins" in cv.table.value


def test_compare_rows_from_dicts_score_them():
    rows = compare_rows([dict(input="q", expected="a b c", base="x", fine_tuned="a b c")])
    assert rows[0]["fine_tuned_metrics"]["exact_match"] == 1.0 and rows[0]["base_metrics"]["exact_match"] == 0.0
    assert rows[0]["fine_tuned_score"] > rows[0]["base_score"]
