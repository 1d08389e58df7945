"The bundled demo task: reproducible, labels decided by cues, a held-out set of unseen cue combinations."
import hashlib, json
import pytest
from finetune_nb.demo import (CUES, CATEGORIES, PRIORITIES, SENTIMENTS, DEMO_FIELDS, DEMO_SYSTEM, make_demo_data,
                              demo_labels, demo_cues, demo_pretrain_text, write_demo_files, demo_recipe, _fragments)


@pytest.fixture(scope="module")
def demo(): return make_demo_data()


def _cue_triple(msg:str)->tuple:
    "Which cue template (label, index) of each field the message contains; exactly one per field."
    m, out = msg.lower(), []
    for f in DEMO_FIELDS:
        hits = [(l, i) for l, ts in CUES[f].items() for i, t in enumerate(ts) if t and all(p in m for p in _fragments(t))]
        if f == "sentiment" and not hits: hits = [("neutral", CUES[f]["neutral"].index(""))]
        assert len(hits) == 1, (f, hits, msg)
        out.append(hits[0])
    return tuple(out)


def test_sizes_and_shape(demo):
    train, test = demo
    assert (len(train), len(test)) == (2000, 200)
    for r in train[:50] + test[:50]:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == DEMO_SYSTEM
        ans = json.loads(r["messages"][2]["content"])
        assert list(ans) == list(DEMO_FIELDS)
        assert ans["category"] in CATEGORIES and ans["priority"] in PRIORITIES and ans["sentiment"] in SENTIMENTS


def test_deterministic_on_any_machine(demo):
    assert make_demo_data() == demo
    assert make_demo_data(seed=1) != demo
    # pinned: the same bytes on every machine and Python version (no hash(), no global random state)
    blob = json.dumps(make_demo_data(100, 20, seed=0), sort_keys=True).encode()
    assert hashlib.sha256(blob).hexdigest()[:16] == PINNED_DEMO_HASH
    assert demo_pretrain_text(300) == demo_pretrain_text(300)
    assert hashlib.sha256("\n".join(demo_pretrain_text(300)).encode()).hexdigest()[:16] == PINNED_PRETRAIN_HASH


PINNED_DEMO_HASH = "99010e5573a77406"
PINNED_PRETRAIN_HASH = "fa4ae9986ec1d3e6"


def test_labels_are_decided_by_cues(demo):
    train, test = demo
    for r in train + test:
        labels, cues = demo_labels(r), demo_cues(r["messages"][1]["content"])
        assert {f: {labels[f]} for f in DEMO_FIELDS} == cues


def test_heldout_cue_combinations_unseen(demo):
    train, test = demo
    tr = {_cue_triple(r["messages"][1]["content"]) for r in train}
    te = [_cue_triple(r["messages"][1]["content"]) for r in test]
    assert len(set(te)) == len(te)          # no duplicates inside the test set
    assert not (set(te) & tr)               # no test cue combination occurs in training
    # ... and with n_heldout_combos, some whole label combinations occur only in the test set
    tr6, te6 = make_demo_data(600, 60, seed=2, n_heldout_combos=6)
    tr_labels = {tuple(demo_labels(r).values()) for r in tr6}
    te_labels = [tuple(demo_labels(r).values()) for r in te6]
    only_test = {c for c in te_labels if c not in tr_labels}
    assert len(only_test) == 6 and sum(c in only_test for c in te_labels) == len(te6) // 2
    # ... but every single cue phrasing and label was taught
    seen = {(f, c) for t in tr for f, c in zip(DEMO_FIELDS, t)}
    assert all((f, c) in seen for t in te for f, c in zip(DEMO_FIELDS, t))


def test_lexical_variety(demo):
    train, _ = demo
    msgs = [r["messages"][1]["content"] for r in train]
    assert len(set(msgs)) == len(msgs)
    assert len({w for m in msgs for w in m.split()}) > 300
    for field, labels in (("category", CATEGORIES), ("priority", PRIORITIES), ("sentiment", SENTIMENTS)):
        counts = [sum(demo_labels(r)[field] == l for r in train) for l in labels]
        assert min(counts) > 0.5 * len(train) / len(labels), (field, counts)   # roughly balanced


def test_demo_labels_rejects_other_shapes():
    assert demo_labels('{"category": "billing", "priority": "low", "sentiment": "neutral"}') == \
        {"category": "billing", "priority": "low", "sentiment": "neutral"}
    for bad in ['{"category": "billing"}', "billing, low, neutral", '["billing"]', '{"category": "billing", "priority": "low", "sentiment": "neutral", "x": 1}']:
        assert demo_labels(bad) is None


def test_pretrain_text_has_vocabulary_but_no_answers():
    docs = demo_pretrain_text()
    text = "\n".join(docs)
    for w in CATEGORIES + PRIORITIES + SENTIMENTS + ['"category"', '"priority"', '"sentiment"']: assert w in text, w
    assert not any(demo_labels(d) for d in docs)                    # never the target format
    assert not any('"category"' in d and '"priority"' in d for d in docs)
    assert DEMO_SYSTEM not in text


def test_records_pass_validation(demo):
    from finetune_nb.data import validate_records
    train, test = demo
    rep = validate_records(train + test)
    assert rep.ok, rep.errors[:3]
    assert not [w for w in rep.warnings if w.kind == "duplicate"]


def test_write_demo_files(tmp_path):
    from finetune_nb.data import read_dataset
    ps = write_demo_files(tmp_path, n_train=30, n_test=10, seed=3)
    assert set(ps) == {"train", "test", "pretrain"}
    train, test = make_demo_data(30, 10, seed=3)
    assert read_dataset(ps["train"]).to_records() == train
    assert read_dataset(ps["test"]).to_records() == test
    assert ps["pretrain"].read_text().splitlines() == demo_pretrain_text()


def test_demo_recipe_fits_the_trainer_configs():
    from finetune_nb.lora import TrainingConfig, LoRAConfig
    r = demo_recipe()
    tc = TrainingConfig(**r["training"])
    assert tc.method in ("full", "lora", "qlora") and tc.max_steps and tc.max_steps > 0
    if tc.method != "full": LoRAConfig(**r["lora"])


@pytest.mark.slow
def test_demo_recipe_on_tiny(tiny_model_path):
    "The demo recipe through LocalFineTuner meets the issue's target: valid JSON >= 95%, exact >= 70%, base <= 10%."
    import torch
    from finetune_nb.lora import LocalFineTuner, TrainingConfig, LoRAConfig
    from finetune_nb.infer import generate_chat
    from finetune_nb.tiny import TINY_MODEL
    train, test = make_demo_data()
    r = demo_recipe()
    ft = LocalFineTuner(TINY_MODEL, training_config=TrainingConfig(**r["training"], save_steps=None, progress=False),
                        lora_config=LoRAConfig(**r["lora"]) if r["lora"] else None)
    ft.load()
    convs = [x["messages"][:-1] for x in test]
    def score(model):
        gens = generate_chat(model, ft.tokenizer, convs, max_new_tokens=40)
        preds = [demo_labels(g.text) for g in gens]
        return (sum(p is not None for p in preds) / len(test),
                sum(p == demo_labels(x) for p, x in zip(preds, test)) / len(test))
    base_valid, base_exact = score(ft.model)
    res = ft.train(train)
    valid, exact = score(ft.model)
    assert base_valid <= 0.10 and base_exact <= 0.10
    assert valid >= 0.95
    assert exact >= 0.70, f"exact match {exact} (recipe measured {r['measured']['fine_tuned']['exact']})"
    assert res.final_loss < res.loss_history[0]["loss"] / 3


# The tool-calling variant: the triage verdict as a `create_ticket` call among three tools.
from finetune_nb.demo import (DEMO_TOOLS, TOOLS_SYSTEM, TOOL_SHARES, REASONS, CARRIERS, ESCALATION_CUES, TRACKING_CUES, make_tool_demo_data,
                              demo_tool_call)


@pytest.fixture(scope="module")
def tool_demo(): return make_tool_demo_data()


def test_tool_demo_records_are_valid_tool_data(tool_demo):
    "Valid per the data module's validator (tools, calls to declared functions, JSON arguments) and per each tool's JSON Schema."
    from jsonschema import Draft202012Validator
    from finetune_nb.data import validate_records
    train, test = tool_demo
    rep = validate_records(train + test)
    assert rep.ok and not rep.errors, rep.errors[:3]
    assert not [w for w in rep.warnings if w.kind == "duplicate"]
    schemas = {t["function"]["name"]: Draft202012Validator(t["function"]["parameters"]) for t in DEMO_TOOLS}
    for r in train + test:
        assert r["tools"] == DEMO_TOOLS and [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == TOOLS_SYSTEM and r["messages"][2]["content"] is None
        (call,) = r["messages"][2]["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        name, args = demo_tool_call(r)
        assert not list(schemas[name].iter_errors(args)), (name, args)
    # the validator can fail on this data: a call to an undeclared function, and a tool result answering no call
    bad = json.loads(json.dumps(test[0]))
    bad["messages"][2]["tool_calls"][0]["function"]["name"] = "refund_order"
    bad["messages"].append({"role": "tool", "tool_call_id": "call_nope", "content": "ok"})
    kinds = {e.kind for e in validate_records([bad]).errors}
    assert {"unknown_function", "unmatched_tool_call_id"} <= kinds, kinds


def test_tool_demo_calls_are_decided_by_cues(tool_demo):
    train, test = tool_demo
    for r in train + test:
        msg = r["messages"][1]["content"]
        name, args = demo_tool_call(r)
        esc = {l for l, ts in ESCALATION_CUES.items() for t in ts if all(p in msg.lower() for p in _fragments(t))}
        track = [t for t in TRACKING_CUES if all(p in msg.lower() for p in _fragments(t))]
        carriers = {c for c, named in CARRIERS.items() if named in msg}
        if name == "create_ticket":
            assert not esc and not track and not carriers and demo_cues(msg) == {f: {args[f]} for f in DEMO_FIELDS}
        elif name == "escalate_to_human": assert esc == {args["reason"]} and not track and not carriers, (msg, args)
        else: assert len(track) == 1 and not esc and carriers == {args["carrier"]}, (msg, args)


def test_tool_demo_heldout_and_deterministic(tool_demo):
    train, test = tool_demo
    assert (len(train), len(test)) == (2000, 200) and make_tool_demo_data() == tool_demo
    assert make_tool_demo_data(seed=1) != tool_demo
    blob = json.dumps(make_tool_demo_data(100, 20, seed=0), sort_keys=True).encode()
    assert hashlib.sha256(blob).hexdigest()[:16] == PINNED_TOOL_DEMO_HASH
    msgs = {r["messages"][1]["content"] for r in train}
    assert not any(r["messages"][1]["content"] in msgs for r in test)
    for rs in (train, test):                                              # every tool and every argument value is taught and tested
        calls = [demo_tool_call(r) for r in rs]
        for tool, share in TOOL_SHARES.items(): assert abs([n for n, _ in calls].count(tool) / len(rs) - share) < 0.05, tool
        assert {a["reason"] for n, a in calls if n == "escalate_to_human"} == set(REASONS)
        assert {a["carrier"] for n, a in calls if n == "track_parcel"} == set(CARRIERS)


PINNED_TOOL_DEMO_HASH = "b9fb4d30c8ceec68"


def test_write_tool_demo_files_round_trip(tmp_path):
    from finetune_nb.data import read_dataset
    ps = write_demo_files(tmp_path, n_train=30, n_test=10, seed=3, task="tools")
    assert (ps["train"].name, ps["test"].name) == ("demo_tools_train.jsonl", "demo_tools_test.jsonl")
    train, test = make_tool_demo_data(30, 10, seed=3)
    assert read_dataset(ps["train"]).to_records() == train and read_dataset(ps["test"]).to_records() == test
    with pytest.raises(ValueError, match="unknown demo task"): write_demo_files(tmp_path, task="poetry")


def test_tool_demo_recipe_fits_the_trainer_configs():
    from finetune_nb.lora import TrainingConfig
    r = demo_recipe("tools")
    tc = TrainingConfig(**r["training"])
    assert tc.method == "full" and r["lora"] is None and r["data"]["n_train"] > 0 and r["eval"]["max_new_tokens"] >= 64
    ms = r["measured"]
    assert ms["meets_target"] == (ms["fine_tuned"]["tool_call_exact_match"] >= 0.90 and ms["base"]["tool_call_exact_match"] <= 0.10)
