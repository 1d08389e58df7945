"Data module: round-trips, every validation kind on a crafted file, fuzzing, token counts, split reproducibility."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from finetune_nb.data import (read_dataset, write_dataset, write_alpaca, validate_file, validate_records, count_tokens,
                              split, dedupe, to_records, ValidationReport, DatasetBuilder, estimate_cost, TokenCounter)
from finetune_nb.core import DataError, DataValidationError

def rec(u, a, system=None, **kw):
    ms = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": u}, {"role": "assistant", "content": a, **kw}]
    return {"messages": ms}

MULTI = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q1"},
                      {"role": "assistant", "content": "a1", "weight": 0}, {"role": "user", "content": "q2 ✓ ünïcode"},
                      {"role": "assistant", "content": "a2", "weight": 1}]}
SINGLE = [rec(f"question {i}", f"answer {i}", system="be brief" if i % 2 else None) for i in range(12)]

@pytest.mark.parametrize("fmt,suffix", [("openai", ".jsonl"), ("sharegpt", ".jsonl"), ("alpaca", ".json"), ("alpaca", ".jsonl")])
def test_roundtrip(tmp_path, fmt, suffix):
    data = SINGLE + ([MULTI] if fmt != "alpaca" else [])
    p = write_dataset(data, tmp_path/f"d{suffix}", fmt)
    assert read_dataset(p).to_records() == data
    assert read_dataset(p, format=fmt).to_records() == data
    assert validate_file(p).ok

def test_alpaca_refuses_multiturn_and_weights(tmp_path):
    with pytest.raises(DataError, match="example 0 cannot be expressed in Alpaca"): write_alpaca([MULTI], tmp_path/"x.json")
    with pytest.raises(DataError, match="example 1"): write_alpaca([SINGLE[0], rec("u", "a", weight=0)], tmp_path/"x.json")

def test_alpaca_input_field_joins_instruction(tmp_path):
    p = tmp_path/"a.json"; p.write_text(json.dumps([{"instruction": "Translate", "input": "hola", "output": "hello"}]))
    assert read_dataset(p).to_records() == [rec("Translate\n\nhola", "hello")]

CASES = [  # (line content, expected error kinds on that line, field)
    ('{"messages": [', ["invalid_json"], ""),
    ('"just a string"', ["not_a_dict"], ""),
    ('{"prompt": "x"}', ["missing_messages"], "messages"),
    ('{"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}', ["message_missing_key"], "messages[0].role"),
    ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}', ["message_missing_key"], "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "x", "extra": 1}, {"role": "assistant", "content": "y"}]}', ["message_unrecognized_key"], "messages[0].extra"),
    ('{"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}', ["unrecognized_role"], "messages[0].role"),
    ('{"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "y"}]}', ["missing_content"], "messages[0].content"),
    ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}', ["missing_content"], "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', ["no_assistant_message"], "messages"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0.5}]}', ["invalid_weight"], "messages[1].weight"),
]

def test_each_error_kind_on_its_line(tmp_path):
    good = [json.dumps(r) for r in SINGLE]
    lines = good[:3] + [c[0] for c in CASES] + good[3:]
    p = tmp_path/"bad.jsonl"; p.write_text("\n".join(lines) + "\n")
    rep = validate_file(p)
    for k, (_, kinds, fld) in enumerate(CASES):
        line = 4 + k
        got = [(i.kind, i.field) for i in rep.errors if i.line == line]
        assert [g[0] for g in got] == kinds, (line, got)
        assert got[0][1] == fld
        assert all(i.file == str(p) for i in rep.errors)
    assert rep.stats["n_examples"] == len(SINGLE)
    assert len(rep.errors) == len(CASES)

def test_file_level_checks(tmp_path):
    (tmp_path/"e.jsonl").write_text("")
    assert [i.kind for i in validate_file(tmp_path/"e.jsonl").errors] == ["empty_file"]
    p = tmp_path/"few.jsonl"; write_dataset(SINGLE[:3], p)
    assert [(i.kind, i.line) for i in validate_file(p).errors] == [("too_few_examples", 0)]
    p = tmp_path/"bytes.jsonl"; p.write_bytes(b"\n".join(json.dumps(r).encode() for r in SINGLE) + b'\n{"messages": "caf\xe9"}\n')
    assert [(i.kind, i.line) for i in validate_file(p).errors] == [("non_utf8", 13)]

def test_duplicates_and_too_long(tmp_path):
    data = SINGLE + [SINGLE[0], rec("question  1 ", "answer 1", system="be brief"), rec("long " * 300, "x")]
    p = write_dataset(data, tmp_path/"d.jsonl")
    rep = validate_file(p, max_tokens=200)
    assert [(i.kind, i.line) for i in rep.warnings] == [("duplicate", 13), ("near_duplicate", 14), ("too_long", 15)]
    assert "line 1" in rep.warnings[0].message and "line 2" in rep.warnings[1].message
    assert len(dedupe(data)) == len(SINGLE) + 1

def test_reports_every_bad_line_in_a_big_file(tmp_path):
    lines = [json.dumps(rec(f"q{i}", f"a{i}")) if i % 10 else "{bad" for i in range(100_000)]
    p = tmp_path/"big.jsonl"; p.write_text("\n".join(lines))
    rep = validate_file(p, count_tokens=False)
    assert len(rep.errors) == 10_000 and rep.errors[-1].line == 99_991
    assert rep.stats["n_examples"] == 90_000

def test_validation_error_message_names_file_line_field(tmp_path):
    p = tmp_path/"x.jsonl"; p.write_text("\n".join([json.dumps(r) for r in SINGLE] + [CASES[6][0]]))
    with pytest.raises(DataValidationError, match=r"x\.jsonl:13: messages\[0\]\.role: role 'bot'") as e: validate_file(p).raise_for_errors()
    assert e.value.report.errors[0].kind == "unrecognized_role"

def test_alpaca_and_sharegpt_validation(tmp_path):
    p = tmp_path/"a.jsonl"; p.write_text("\n".join(json.dumps({"instruction": f"i{i}", "output": f"o{i}"}) for i in range(11)) + '\n{"instruction": 3}\n')
    rep = validate_file(p)
    assert [(i.line, i.kind) for i in rep.errors] == [(12, "bad_record")] and rep.stats["n_examples"] == 11
    p = tmp_path/"s.jsonl"; p.write_text("\n".join(json.dumps({"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}) for i in range(10))
                                      + '\n{"conversations": [{"from": "alien", "value": "x"}]}\n')
    rep = validate_file(p, format="sharegpt")
    assert [(i.line, i.field) for i in rep.errors] == [(11, "conversations[0].from")]

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.sampled_from(["messages", "role", "content", "weight", "x"]) | st.text(max_size=4), ch, max_size=4),
                           max_leaves=20)

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(st.binary(max_size=40), json_values.map(lambda v: json.dumps(v).encode())), max_size=12))
def test_fuzz_validator_only_returns_reports(tmp_path, lines):
    p = tmp_path/"fuzz.jsonl"; p.write_bytes(b"\n".join(lines))
    for fmt in (None, "alpaca", "sharegpt"):
        rep = validate_file(p, format=fmt)
        assert isinstance(rep, ValidationReport)
        assert all(i.line >= 0 and i.kind for i in rep.errors + rep.warnings)

@settings(max_examples=200, deadline=None)
@given(recs=st.lists(json_values, max_size=8))
def test_fuzz_validate_records(recs):
    assert isinstance(validate_records(recs), ValidationReport)

def test_exact_token_counts():
    assert count_tokens("hello world") == 2
    assert count_tokens("Hello, world! 日本語") == 6
    assert count_tokens("hello world", model="gpt-3.5-turbo-0125") == 2
    tc = TokenCounter("gpt-4o-mini")
    # cookbook rule: 3 priming + per message (3 + role + content)
    msgs = [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hello world"}]
    assert tc.messages(msgs) == 3 + 2 * (3 + 1 + 2)
    assert count_tokens([rec("hello world", "hello world")]) == [3 + 2 * 6]

def test_cost_estimate_uses_epoch_rule_and_overrides():
    est = estimate_cost([100] * 10, model="my-model", prices={"my-model": 10.0})
    assert (est["n_epochs"], est["trained_tokens"], est["estimated_usd"]) == (10, 10_000, 0.1)
    assert estimate_cost([100] * 10, model="unknown")["estimated_usd"] is None

def test_split_reproducible_across_processes(tmp_path):
    data = [rec(f"q{i}", f"a{i}") for i in range(200)]
    p = write_dataset(data, tmp_path/"d.jsonl")
    code = ("import sys,json; from finetune_nb.data import split, read_dataset; tr,va = split(read_dataset(sys.argv[1]), 0.1, seed=7); "
            "print(json.dumps([r['messages'][0]['content'] for r in va.to_records()]))")
    outs = {subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout for h in (1, 2)}
    assert len(outs) == 1
    va = json.loads(outs.pop())
    assert len(va) == 20 and va == [r["messages"][0]["content"] for r in split(data, 0.1, seed=7)[1].to_records()]
    assert va != [r["messages"][0]["content"] for r in split(data, 0.1, seed=8)[1].to_records()]
    tr, va2 = split(data, 0.1, seed=7)
    assert len(tr) + len(va2) == 200 and not {str(r) for r in tr.to_records()} & {str(r) for r in va2.to_records()}

def test_builder_keeps_whole_conversation(tmp_path):
    b = DatasetBuilder(system="S").add_from_conversations([MULTI["messages"][1:]])
    assert to_records(b.dataset)[0] == {"messages": [{"role": "system", "content": "S"}] + MULTI["messages"][1:]}
    for i in range(9): b.add_example(f"u{i}", f"a{i}")
    assert b.validate().ok
    assert read_dataset(b.export_openai(tmp_path/"o.jsonl")).to_records() == to_records(b.dataset)
