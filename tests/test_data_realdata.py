"""Acceptance on real public fine-tuning files (../shared/realdata, read in place): counts, untouched splits, lossless
OpenAI <-> ShareGPT tool round trips, refusals with locations, tool validation and tool token counts."""
import json
from pathlib import Path
import pytest
from finetune_nb.core import DataError
from finetune_nb.data import (read_dataset, read_items, detect_format, write_dataset, export_records, validate_file, validate_records,
                              split, split_file, dedupe_file, TokenCounter)
from finetune_nb.cli import run_cli

REAL = Path(__file__).resolve().parent.parent.parent/"shared"/"realdata"
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real data files not found at {REAL} (they live beside the repository, in shared/realdata)")

READ = {  # file -> (format detected from the content, records)
    "axolotl_alpaca_fixture.json": ("alpaca", 2), "fastchat_dummy_conversation.json": ("sharegpt", 300),
    "gpteacher_codegen_instruct.json": ("alpaca", 300), "lf_alpaca_en_demo.json": ("alpaca", 300), "lf_identity.json": ("alpaca", 91),
    "lf_glaive_toolcall_en_demo.json": ("sharegpt", 300), "lf_mllm_demo.json": ("openai", 6),
    "lf_reason_tool_use_demo_50.jsonl": ("lf_v1", 50), "lf_v1_sft_demo.jsonl": ("lf_v1", 300),
    "oc_drone_training.jsonl": ("openai", 103), "oc_toy_chat_fine_tuning.jsonl": ("openai", 5)}
REFUSED = {  # file -> words the refusal must contain (the format it recognised)
    "lf_dpo_en_demo.json": "ShareGPT preference data", "lf_kto_en_demo.json": "KTO data",
    "lf_v1_dpo_demo.jsonl": "LLaMA-Factory v1 preference data", "lf_dataset_info.json": "one JSON object"}

def records(p): return [o for _, o in read_items(p)[0]]
def dumps(recs): return [json.dumps(r, ensure_ascii=False) for r in recs]

def test_every_file_is_accounted_for():
    assert {p.name for p in REAL.iterdir() if p.suffix in (".json", ".jsonl")} == set(READ) | set(REFUSED)

@pytest.mark.parametrize("name", sorted(READ))
def test_reads_with_the_right_count(name):
    fmt, n = READ[name]
    assert detect_format(REAL/name) == fmt
    ds = read_dataset(REAL/name)
    assert len(ds) == n == len(records(REAL/name))
    assert all(c.messages and c.messages[-1].role == "assistant" for c in ds)

@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_the_format_named(name):
    with pytest.raises(DataError, match=REFUSED[name]): read_dataset(REAL/name)

@pytest.mark.parametrize("name", sorted(READ) + ["lf_dpo_en_demo.json", "lf_kto_en_demo.json"])
def test_split_outputs_concatenate_back_to_the_input(tmp_path, name):
    src = records(REAL/name)
    res = split_file(REAL/name, tmp_path, val_frac=0.2, seed=3)
    tr, va = records(res["train"]), records(res["val"])
    assert (len(tr), len(va)) == (len(src) - round(len(src) * 0.2), round(len(src) * 0.2))
    assert Path(res["train"]).suffix == (REAL/name).suffix  # a JSON array stays an array
    pos = {s: i for i, s in enumerate(dumps(src))}  # a split keeps the input order within each part
    assert sorted(dumps(tr) + dumps(va), key=pos.get) == dumps(src) if len(pos) == len(src) else sorted(dumps(tr) + dumps(va)) == sorted(dumps(src))

def test_library_split_and_dedupe_pass_records_through(tmp_path):
    src = records(REAL/"oc_drone_training.jsonl")
    tr, va = split(read_dataset(REAL/"oc_drone_training.jsonl"), 0.25, seed=0)
    assert sorted(dumps(tr.to_records() + va.to_records())) == sorted(dumps(src))
    res = dedupe_file(REAL/"lf_glaive_toolcall_en_demo.json", tmp_path/"g.json")
    kept = records(tmp_path/"g.json")
    assert res["n_out"] == len(kept) == len(set(dumps(records(REAL/"lf_glaive_toolcall_en_demo.json")))) < 300
    assert set(dumps(kept)) <= set(dumps(records(REAL/"lf_glaive_toolcall_en_demo.json")))

def test_cli_split_passes_tool_fields_through(tmp_path):
    "The issue's first symptom: `split` on the cookbook's drone file dropped tools, tool_calls and parallel_tool_calls."
    rc, out, err = run_cli("split", REAL/"oc_drone_training.jsonl", "--out-dir", tmp_path, "--json")
    r = json.loads(out)
    assert rc == 0, err
    both = records(r["train"]) + records(r["val"])
    assert sorted(dumps(both)) == sorted(dumps(records(REAL/"oc_drone_training.jsonl")))
    assert all(o["tools"] and o["parallel_tool_calls"] is False and o["messages"][-1]["tool_calls"] for o in both)
    assert validate_file(r["train"]).ok

@pytest.mark.parametrize("ext", [".jsonl", ".json"])
def test_openai_to_sharegpt_tools_and_back_is_identical(tmp_path, ext):
    src = REAL/"oc_drone_training.jsonl"
    sg = write_dataset(read_dataset(src), tmp_path/f"drone.sharegpt{ext}", "sharegpt")
    first = records(sg)[0]
    assert [t["from"] for t in first["conversations"]] == ["human", "function_call"] and first["system"].startswith("You are an intelligent AI")
    assert json.loads(first["tools"])[0]["name"] == "takeoff_drone"      # LLaMA-Factory's tools column: JSON text of functions
    assert detect_format(sg) == "sharegpt"
    back = write_dataset(read_dataset(sg), tmp_path/"back.jsonl", "openai")
    assert dumps(records(back)) == dumps(records(src))

def test_sharegpt_tools_to_openai_and_back_is_identical(tmp_path):
    src = REAL/"lf_glaive_toolcall_en_demo.json"
    oa = write_dataset(read_dataset(src), tmp_path/"glaive.jsonl", "openai")
    recs = records(oa)
    assert sum(bool(r["tools"]) for r in recs) == 191 and sum(r["tools"] == [] for r in recs) == 109   # none of the 300 tool columns lost
    calls = [m for r in recs for m in r["messages"] if m.get("tool_calls")]
    results = [m for r in recs for m in r["messages"] if m["role"] == "tool"]
    assert len(calls) == len(results) == 211 and all(m["tool_call_id"] for m in results)
    assert not [i for i in validate_file(oa).errors if i.kind in ("missing_tool_call_id", "unmatched_tool_call_id", "invalid_arguments")]
    back = write_dataset(read_dataset(oa), tmp_path/"glaive.json", "sharegpt")
    assert dumps(records(back)) == dumps(records(src))

@pytest.mark.parametrize("name,fmt", [("lf_v1_sft_demo.jsonl", "lf_v1"), ("lf_reason_tool_use_demo_50.jsonl", "lf_v1"), ("lf_alpaca_en_demo.json", "alpaca"),
                                      ("gpteacher_codegen_instruct.json", "alpaca"), ("lf_identity.json", "alpaca"), ("fastchat_dummy_conversation.json", "sharegpt")])
def test_same_format_round_trips_are_identical(tmp_path, name, fmt):
    out = write_dataset(read_dataset(REAL/name), tmp_path/("x" + (REAL/name).suffix), fmt)
    assert dumps(records(out)) == dumps(records(REAL/name))

def test_alpaca_keeps_input_and_response(tmp_path):
    ds = read_dataset(REAL/"lf_alpaca_en_demo.json")
    out = records(write_dataset(ds, tmp_path/"a.json", "alpaca"))
    assert sum(bool(o["input"]) for o in out) == 121                                  # not merged into the instruction
    g = read_dataset(REAL/"gpteacher_codegen_instruct.json")
    assert all(c.messages[-1].content.strip() for c in g)                             # GPTeacher's `response` is the reply
    assert all("response" in o and "output" not in o for o in records(write_dataset(g, tmp_path/"g.json", "alpaca")))

def test_conversions_that_cannot_hold_a_field_stop_with_its_location(tmp_path):
    with pytest.raises(DataError, match=r"oc_drone_training\.jsonl:1: tools: cannot be expressed in Alpaca"):
        write_dataset(read_dataset(REAL/"oc_drone_training.jsonl"), tmp_path/"d.json", "alpaca")
    assert not (tmp_path/"d.json").exists()
    g = read_dataset(REAL/"lf_glaive_toolcall_en_demo.json")        # a JSON array: the line the record starts on, and its index
    first_tools = next(i for i, c in enumerate(g) if c.tools)
    line = read_items(REAL/"lf_glaive_toolcall_en_demo.json")[0][first_tools][0][1]
    with pytest.raises(DataError, match=rf"lf_glaive_toolcall_en_demo\.json:{line}: \[{first_tools}\]\.tools: cannot be expressed in Alpaca"):
        export_records(g, "alpaca")
    with pytest.raises(DataError, match=r"lf_reason_tool_use_demo_50\.jsonl:1: messages\[2\]\.content\[0\]: cannot be expressed in OpenAI chat: no place for reasoning content parts"):
        export_records(read_dataset(REAL/"lf_reason_tool_use_demo_50.jsonl"), "openai")
    rc, out, err = run_cli("convert", REAL/"lf_reason_tool_use_demo_50.jsonl", tmp_path/"r.jsonl", "--lossy")
    assert rc == 0 and "reasoning content parts: 112" in out, (out, err)

def test_validate_catches_a_tool_message_without_a_matching_call(tmp_path):
    recs = records(REAL/"oc_drone_training.jsonl")
    recs[4]["messages"].append({"role": "tool", "tool_call_id": "call_nope", "content": "{\"ok\": true}"})
    recs[7]["messages"].append({"role": "tool", "content": "done"})
    recs[9]["messages"][-1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    recs[11]["messages"][-1]["tool_calls"][0]["function"]["name"] = "fly_to_moon"
    p = tmp_path/"bad.jsonl"; p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rep = validate_file(p)
    assert [(i.line, i.field, i.kind) for i in rep.errors] == [
        (5, "messages[3].tool_call_id", "unmatched_tool_call_id"), (8, "messages[3].tool_call_id", "missing_tool_call_id"),
        (10, "messages[2].tool_calls[0].function.arguments", "invalid_arguments"), (12, "messages[2].tool_calls[0].function.name", "unknown_function")]
    rc, out, _ = run_cli("validate", p)
    assert rc == 1 and f"{p}:5: messages[3].tool_call_id" in out

def test_stats_tokens_include_tools_and_calls():
    rc, out, _ = run_cli("stats", REAL/"oc_drone_training.jsonl", "--json")
    s = json.loads(out)
    tc = TokenCounter("gpt-4o-mini")
    content_only = sum(tc.messages([{"role": m["role"], "content": m.get("content") or ""} for m in r["messages"]]) for r in records(REAL/"oc_drone_training.jsonl"))
    assert rc == 0 and s["tokens_total"] >= 4 * content_only                        # the issue: ~10x too low when tools were ignored
    assert s["tool_definition_tokens"] > 0 and s["tool_call_tokens"] > 0
    assert s["tokens_total"] == content_only + s["tool_definition_tokens"] + s["tool_call_tokens"]
    assert s["assistant_tokens"] == s["tool_call_tokens"]                            # the drone's assistant turns are calls only
    rc, out, _ = run_cli("stats", REAL/"oc_drone_training.jsonl")
    assert "in tool definitions" in out and "in tool calls" in out
