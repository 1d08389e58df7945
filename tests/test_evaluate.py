"Evaluation: metrics on hand-checked cases, statistics, the evaluator and judge over real HTTP, the local-model path, the report."
import asyncio, json, math
import pytest
import openai

from finetune_nb.core import ConfigError, DataError
from finetune_nb.evaluate import (
    normalize_text, exact_match, normalized_exact_match, token_f1, word_overlap, length_ratio, json_valid,
    json_field_accuracy, json_field_scores, resolve_metrics, compute_metrics, overall_score, default_weights, register_metric,
    METRICS, JSON_METRICS, paired_bootstrap_ci, mean_ci, wilson_ci, to_examples, EvalExample, FineTuneEvaluator,
    ABTestEvaluator, parse_verdict, judge_messages, summarize, write_report, plot_loss_curves)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------- metrics (hand-checked)

@pytest.mark.parametrize("e,a,want", [("Paris", " Paris\n", 1.0), ("Paris", "paris", 0.0), ("", "", 1.0), ("a b", "a  b", 0.0)])
def test_exact_match(e, a, want): assert exact_match(e, a) == want

@pytest.mark.parametrize("e,a,want", [("The Eiffel Tower!", "eiffel   tower", 1.0), ("an apple", "apple.", 1.0), ("apple", "apples", 0.0)])
def test_normalized_exact_match(e, a, want): assert normalized_exact_match(e, a) == want

def test_normalize_text(): assert normalize_text("  The QUICK, brown fox!  ") == "quick brown fox"

@pytest.mark.parametrize("e,a,want", [
    ("the cat sat", "a cat sat down", 0.8),          # common=2, p=2/3, r=1 -> 0.8
    ("w x y z", "w x", 2*0.5*1/(1.5)),               # p=1, r=0.5 -> 2/3
    ("a b c d", "a b", 0.5),                         # "a" is an article: b c d vs b -> p=1, r=1/3
    ("x x y", "x y y", 2/3),                         # multiset: common = min counts = x1 + y1 = 2; p=r=2/3
    ("cat", "dog", 0.0), ("", "", 1.0), ("", "dog", 0.0), ("The.", "a", 1.0)])   # last: both normalise to empty
def test_token_f1(e, a, want): assert token_f1(e, a) == pytest.approx(want)

@pytest.mark.parametrize("e,a,want", [("red green blue", "GREEN, red", 2/3), ("red red", "red", 1.0), ("", "anything", 1.0), ("x y", "", 0.0)])
def test_word_overlap(e, a, want): assert word_overlap(e, a) == pytest.approx(want)

@pytest.mark.parametrize("e,a,want", [("abcd", "ab", 0.5), ("ab", " abcd ", 0.5), ("", "abc", 0.0), ("", "", 1.0), ("abcde", "abcdefghijkl", 5/12)])   # too long and too short alike
def test_length_ratio(e, a, want): assert length_ratio(e, a) == pytest.approx(want)

def test_json_metrics():
    exp = '{"category": "billing", "priority": "high", "sentiment": "negative"}'
    assert json_valid(exp, ' {"a": 1} ') == 1.0 and json_valid(exp, '{"a": 1') == 0.0 and json_valid(exp, "```json\n{}\n```") == 0.0
    assert json_field_scores(exp, '{"category": " BILLING", "priority": "urgent", "extra": 1}') == {"category": 1.0, "priority": 0.0, "sentiment": 0.0}
    assert json_field_accuracy(exp, '{"category": "billing", "priority": "high", "sentiment": "neutral"}') == pytest.approx(2/3)
    assert json_field_accuracy(exp, exp) == 1.0 and json_field_accuracy(exp, "[1, 2]") == 0.0 and json_field_accuracy(exp, "oops") == 0.0
    assert json_field_scores('{"n": 3, "tags": ["a"]}', '{"n": 3.0, "tags": ["A"]}') == {"n": 1.0, "tags": 0.0}   # non-strings: exact
    with pytest.raises(DataError, match="JSON object"): json_field_accuracy("plain text", "{}")

def test_metric_registry_custom_callables_and_overall():
    def starts_with_brace(e, a): return float(a.strip().startswith("{"))
    ms = resolve_metrics(["exact_match", starts_with_brace, "length_ratio", "json_field_accuracy"])
    assert list(ms) == ["exact_match", "starts_with_brace", "length_ratio", "json_field_accuracy"]
    v = compute_metrics('{"a": 1, "b": 2}', '{"a": 1, "b": 3}', ms)
    assert v == {"exact_match": 0.0, "starts_with_brace": 1.0, "length_ratio": 1.0, "json_field_accuracy": 0.5,
                 "json_field_accuracy.a": 1.0, "json_field_accuracy.b": 0.0}
    assert default_weights(v) == {"exact_match": 1, "starts_with_brace": 1, "length_ratio": 0, "json_field_accuracy": 1,
                                  "json_field_accuracy.a": 0, "json_field_accuracy.b": 0}
    assert overall_score(v) == pytest.approx(0.5)                                   # (0 + 1 + 0.5) / 3
    assert overall_score(v, {"json_field_accuracy": 3, "exact_match": 1}) == pytest.approx(1.5/4)
    assert math.isnan(overall_score({"length_ratio": 2.0}))
    assert resolve_metrics({"mine": lambda e, a: 0.5})["mine"]("", "") == 0.5
    register_metric("always_one", lambda e, a: 1.0)
    try: assert list(resolve_metrics(["always_one"])) == ["always_one"]
    finally: METRICS.pop("always_one")
    with pytest.raises(ConfigError, match="unknown metric"): resolve_metrics(["rouge"])

# ---------------------------------------------------------------- statistics

def test_paired_bootstrap_is_seeded_and_sane():
    import numpy as np
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 200); tuned = base + 0.1 + rng.normal(0, 0.05, 200)
    a, b = paired_bootstrap_ci(base, tuned, seed=5), paired_bootstrap_ci(base, tuned, seed=5)
    assert a == b and a != paired_bootstrap_ci(base, tuned, seed=6)
    d = tuned - base
    assert a[0] < d.mean() < a[1] and 0.08 < a[0] and a[1] < 0.12
    assert (a[1] - a[0]) == pytest.approx(2*1.96*d.std()/math.sqrt(len(d)), rel=0.15)   # ~ the normal-theory width
    lo, hi = paired_bootstrap_ci([0]*50, [1]*25 + [0]*25, seed=0)
    assert lo < 0.5 < hi and lo > 0.3 and hi < 0.7
    assert paired_bootstrap_ci([1, 1], [1, 1]) == (0.0, 0.0)
    assert all(math.isnan(x) for x in paired_bootstrap_ci([], []))
    assert mean_ci([0.5]*10) == (0.5, 0.5)
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_ci(0, 5)[0] == 0.0 and math.isnan(wilson_ci(0, 0)[0])

def test_to_examples_forms_and_errors(tmp_path):
    recs = [{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                          {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "weight": 1}]}]
    ex = to_examples(recs)[0]
    assert ex == EvalExample([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}], "a2")
    p = tmp_path/"held.jsonl"; p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert to_examples(p) == [ex]                                                   # paths go through data.to_records
    assert to_examples([{"input": [{"role": "user", "content": "hi"}], "expected": 4}])[0].expected == "4"
    with pytest.raises(DataError, match="no assistant"): to_examples([{"messages": [{"role": "user", "content": "q"}]}])
    with pytest.raises(DataError, match="neither"): to_examples([{"prompt": "x"}])

# ---------------------------------------------------------------- evaluator over real HTTP (fake OpenAI)

GOLD = [{"input": f"ticket {i}", "expected": json.dumps({"category": c, "priority": p})}
        for i, (c, p) in enumerate([("billing", "high"), ("account", "low"), ("bug", "high"), ("shipping", "low"), ("billing", "low"), ("bug", "low")])]

def scripted(req):
    "base: prose; ft: right JSON except priority wrong on ticket 2; ticket 5 fails for ft with a 400."
    from fake_openai import FakeError
    i = int(req["messages"][-1]["content"].split()[-1])
    if req["model"] == "base": return "I think this is about billing."
    if i == 5: raise FakeError(400, "scripted bad request")
    d = json.loads(GOLD[i]["expected"])
    if i == 2: d["priority"] = "low"
    return json.dumps(d)

@pytest.mark.parametrize("use_async", [True, False])
def test_evaluator_over_http(fake_openai, use_async):
    fake_openai.chat_reply, fake_openai.latency = scripted, 0.02
    cls = openai.AsyncOpenAI if use_async else openai.OpenAI
    client = cls(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    ev = FineTuneEvaluator(client, client, "base", "ft", metrics=JSON_METRICS, concurrency=4, progress=False, seed=1)
    res = ev.evaluate_dataset(GOLD)
    assert [c.index for c in res] == list(range(6))
    assert 1 < fake_openai.max_in_flight <= 4                                       # concurrent, but bounded
    sent = fake_openai.chat_requests[0]
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 256 and sent["seed"] == 1
    assert [c.fine_tuned.metrics.get("json_field_accuracy") for c in res[:5]] == [1.0, 1.0, 0.5, 1.0, 1.0]
    assert res[5].fine_tuned.error and "scripted bad request" in res[5].fine_tuned.error and math.isnan(res[5].fine_tuned.score)
    r0 = res[0].fine_tuned
    assert r0.model == "ft" and r0.actual == GOLD[0]["expected"] and r0.latency >= 0.02 and r0.completion_tokens == 4
    s = ev.summary(seed=0)
    assert (s["n_examples"], s["n_pairs"], s["errors"]) == (6, 5, {"base": 0, "fine_tuned": 1})
    jf = s["metrics"]["json_field_accuracy"]
    assert jf["base"]["mean"] == 0.0 and jf["fine_tuned"]["mean"] == pytest.approx(0.9) and jf["improvement"] == pytest.approx(0.9)
    assert (jf["wins"], jf["ties"], jf["losses"]) == (5, 0, 0) and jf["ci95"][0] > 0.5
    assert s["metrics"]["json_field_accuracy.priority"]["fine_tuned"]["mean"] == pytest.approx(0.8)
    assert s["metrics"]["exact_match"]["fine_tuned"]["mean"] == pytest.approx(0.8)
    assert s["weights"]["length_ratio"] == 0.0 and s == ev.summary(seed=0)
    one = ev.evaluate_example(GOLD[1])
    assert one.fine_tuned.metrics["exact_match"] == 1.0 and one.base.metrics["exact_match"] == 0.0

def test_evaluator_inside_a_running_loop(fake_openai):
    "The sync API works where an event loop is already running (Jupyter), and the async API can be awaited."
    fake_openai.chat_reply = scripted
    mk = lambda: openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    c1, c2 = mk(), mk()           # an AsyncOpenAI client's connection pool belongs to one event loop
    async def main():
        sync_res = FineTuneEvaluator(c1, c1, "base", "ft", progress=False).evaluate_dataset(GOLD[:2])
        async_res = await FineTuneEvaluator(c2, c2, "base", "ft", progress=False).aevaluate_dataset(GOLD[:2])
        return sync_res, async_res
    a, b = asyncio.run(main())
    assert [c.fine_tuned.actual for c in a] == [c.fine_tuned.actual for c in b] == [g["expected"] for g in GOLD[:2]]

# ---------------------------------------------------------------- LLM judge

def test_parse_verdict_fallbacks():
    assert parse_verdict('{"winner": "B", "reason": "x"}') == "B"
    assert parse_verdict('Here you go: {"winner": "a", "reason": "shorter"} Thanks!') == "A"
    assert parse_verdict('{"reason": "x", "winner": "TIE"}') == "tie"
    assert parse_verdict("**Winner:** B") == "B" and parse_verdict(" A. ") == "A"
    for junk in [None, "", "no idea", '{"winner": "C"}', '{"winner": ', "ABBA"]: assert parse_verdict(junk) is None

def test_judge_both_orders_against_loopback(fake_openai):
    "Scripted verdicts: agreement, position bias (tie), garbage in one order, a 500 — recorded, never crashing."
    def judge(req):
        from fake_openai import FakeError
        u = req["messages"][-1]["content"]
        a = u.split("## Reply A\n")[1].split("\n\n## Reply B")[0]
        q = u.split("[user] ")[1].split("\n")[0]
        if q == "q-bias": return '{"winner": "A", "reason": "the first one"}'
        if q == "q-garbage" and a == "good": return "As an AI I cannot judge."
        if q == "q-error" and a == "good": raise FakeError(500, "judge down")
        if q == "q-tie": return "```json\n{\"winner\": \"tie\"}\n```"
        return json.dumps({"winner": "A" if a == "good" else "B", "reason": "good is good"})
    fake_openai.chat_reply = judge
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    ab = ABTestEvaluator(client, "judge-model", concurrency=3, progress=False)
    qs = ["q-b1", "q-b2", "q-a", "q-bias", "q-garbage", "q-error", "q-tie"]
    exs = [{"input": q, "expected": "ref"} for q in qs]
    a_replies = ["bad", "bad", "good", "x", "bad", "bad", "x"]
    b_replies = ["good", "good", "bad", "y", "good", "good", "y"]
    vs = ab.compare(exs, a_replies, b_replies)
    assert [v.winner for v in vs] == ["B", "B", "A", "tie", None, None, "tie"]
    assert (vs[3].first, vs[3].second) == ("A", "B")                             # judged "first" both times
    assert vs[4].malformed and "cannot judge" in " ".join(vs[4].raw) and "judge down" in " ".join(vs[5].raw)
    assert fake_openai.count("POST", "/v1/chat/completions") == 14                # 7 pairs x 2 orders
    assert all(r["model"] == "judge-model" and r["temperature"] == 0.0 for r in fake_openai.chat_requests)
    assert "## Reference answer\nref" in fake_openai.chat_requests[0]["messages"][-1]["content"]
    s = ab.summary(names=("base", "ft"))
    assert (s["n"], s["n_valid"], s["malformed"], s["position_disagreements"]) == (7, 5, 2, 1)
    assert (s["B_wins"]["count"], s["A_wins"]["count"], s["ties"]["count"]) == (2, 1, 2)
    assert s["B_wins"]["rate"] == pytest.approx(0.4) and s["B_wins"]["ci95"] == pytest.approx(list(wilson_ci(2, 5)))
    with pytest.raises(ConfigError): ab.compare(exs, a_replies, b_replies[:2])

def test_judge_prompt_shape():
    m = judge_messages([{"role": "user", "content": "hi"}], "one", "two", reference=None, criteria="be strict")
    assert m[0]["role"] == "system" and "be strict" in m[0]["content"] and '"winner"' in m[0]["content"]
    assert "## Reply A\none" in m[1]["content"] and "## Reply B\ntwo" in m[1]["content"] and "Reference" not in m[1]["content"]

# ---------------------------------------------------------------- local models: a real difference, report and plots

def test_base_vs_adapter_on_held_out_demo_set(tiny_random_path, tiny_random_adapter, tiny_random_model, tmp_path):
    from finetune_nb.infer import LocalChatClient, AsyncLocalChatClient
    from finetune_nb.models import load_model
    from finetune_nb.demo import make_demo_data
    _, test = make_demo_data(n_train=10, n_test=8, seed=0)
    base = AsyncLocalChatClient(client=LocalChatClient(tiny_random_path, model=tiny_random_model[0], tokenizer=tiny_random_model[1]))
    m, t = load_model(tiny_random_path, adapter=tiny_random_adapter, device="cpu")
    tuned = LocalChatClient(tiny_random_path, model=m, tokenizer=t)                  # one async, one sync client
    ev = FineTuneEvaluator(base, tuned, "tiny", "tiny+adapter", metrics=JSON_METRICS, max_tokens=10, progress=False)
    res = ev.evaluate_dataset(test)
    assert len(res) == 8 and all(c.ok for c in res)
    assert all(c.base.completion_tokens == 10 for c in res)                         # real token counts from the local model
    assert sum(c.base.actual != c.fine_tuned.actual for c in res) >= 6             # the adapter changes the replies...
    s = ev.summary()
    lr = s["metrics"]["length_ratio"]
    assert lr["base"]["mean"] != lr["fine_tuned"]["mean"]                           # ...and the scores
    assert s["metrics"]["json_valid"]["base"]["mean"] == 0.0                        # a random model writes no JSON
    files = write_report(s, tmp_path/"report", results=res, loss_history=[{"step": i, "loss": 3/i} for i in range(1, 6)], html=True)
    for k in ("bars", "distributions", "scatter", "loss"): assert files[k].read_bytes()[:4] == b"\x89PNG"
    md = files["report"].read_text()
    assert "tiny+adapter" in md and "| length_ratio | 0.0 |" in md and "![Per-example scores](scatter.png)" in md
    assert json.loads(files["metrics"].read_text())["summary"]["n_pairs"] == 8
    assert len(files["results"].read_text().splitlines()) == 8
    assert "<table>" in files["html"].read_text()
    assert not [p for p in (tmp_path/"report").iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp files

def test_report_with_judge_and_errors(tmp_path):
    from finetune_nb.evaluate import Comparison, EvalResult
    ok = lambda s, m: EvalResult([], "e", "a", s, {"exact_match": s}, 0.1, 1, 1, m)
    bad = EvalResult([], "e", "", float("nan"), {}, 0.0, model="ft", error="RemoteError: down")
    res = [Comparison(0, ok(0.0, "b"), ok(1.0, "ft")), Comparison(1, ok(1.0, "b"), bad)]
    s = summarize(res, base_model="b", fine_tuned_model="ft")
    judge = dict(judge_model="j", models=dict(A="b", B="ft"), n=1, n_valid=1, malformed=0, position_disagreements=0,
                 A_wins=dict(count=0, rate=0.0, ci95=[0, 0.79]), B_wins=dict(count=1, rate=1.0, ci95=[0.21, 1]), ties=dict(count=0, rate=0.0, ci95=[0, 0.79]))
    files = write_report(s, tmp_path, results=res, judge=judge, title="Run 7")
    md = files["report"].read_text()
    assert md.startswith("# Run 7") and "0 base / 1 fine-tuned request errors" in md and "| ft wins | 1 | 1.000 |" in md
    assert json.loads(files["metrics"].read_text())["judge"]["B_wins"]["count"] == 1
    assert (s["n_pairs"], s["overall"]["improvement"]) == (1, 1.0)


@pytest.mark.slow
def test_trained_lora_beats_base_on_demo_held_out(tiny_random_path, tmp_path):
    "A real LoRA run (finetune_nb.lora) on the demo task: the fine-tuned model's token F1 beats the base's, with a CI above 0."
    from finetune_nb.demo import make_demo_data
    from finetune_nb.infer import LocalChatClient
    from finetune_nb.lora import LocalFineTuner, LoRAConfig, TrainingConfig
    train, test = make_demo_data(n_train=300, n_test=20, seed=1)
    tuner = LocalFineTuner(tiny_random_path, LoRAConfig(r=16, alpha=32, target_modules="all-linear", dropout=0.0),
                           TrainingConfig(max_steps=120, lr=1e-2, batch_size=8, grad_accum=1, warmup=0.0, max_length=384,
                                          save_steps=None, progress=False), output_dir=str(tmp_path/"run"))
    run = tuner.train(train)
    ev = FineTuneEvaluator(LocalChatClient(tiny_random_path), LocalChatClient(tiny_random_path, adapter=run.adapter_dir),
                           "tiny", "tiny+lora", metrics=JSON_METRICS, max_tokens=40, progress=False)
    res = ev.evaluate_dataset(test)
    s = ev.summary(seed=0)
    f1 = s["metrics"]["token_f1"]
    assert f1["ci95"][0] > 0 and f1["wins"] > f1["losses"], f1
    files = write_report(s, tmp_path/"report", results=res, loss_history=run.loss_history)
    assert files["loss"].stat().st_size > 1000 and "tiny+lora" in files["report"].read_text()
