"""Preference (DPO) data: every format round-trips losslessly (in itself, and through OpenAI's DPO format), the real
LLaMA-Factory preference files read with the right counts, and validation catches what breaks DPO training."""
import json
from pathlib import Path
import pytest
from finetune_nb.core import DataError
from finetune_nb.data import (PREFERENCE_FORMATS, read_preferences, read_dataset, read_items, detect_format, export_records, write_dataset,
                              validate_file, estimate_cost, split, split_file, Preference, PreferenceDataset)
from finetune_nb.cli import run_cli

REAL = Path(__file__).resolve().parent.parent.parent/"shared"/"realdata"
need_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real data files not found at {REAL} (they live beside the repository, in shared/realdata)")

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a city up.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL = {"id": "call_0", "type": "function", "function": {"name": "lookup", "arguments": '{"city": "Paris"}'}}
SAMPLES = {  # format -> records people write in it (tools, system prompts, extra keys, multi-turn prompts)
    "openai_dpo": [
        {"input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}], "tools": TOOLS, "parallel_tool_calls": False},
         "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [CALL]}], "non_preferred_output": [{"role": "assistant", "content": "Lyon."}], "metadata": {"id": "a"}},
        {"input": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}, "preferred_output": [{"role": "assistant", "content": "Hello!"}],
         "non_preferred_output": [{"role": "assistant", "content": "Go away.", "refusal": None}]}],
    "trl_dpo": [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": [{"role": "user", "content": "Capital of France?"}], "chosen": [{"role": "assistant", "content": "Paris."}],
         "rejected": [{"role": "assistant", "content": "Lyon."}], "tools": [TOOLS[0]["function"]], "score": 0.5},
        {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
        {"chosen": "The sky is blue.", "rejected": "The sky is green."}],
    "sharegpt_dpo": [
        {"conversations": [{"from": "human", "value": "Capital of France?"}], "chosen": {"from": "gpt", "value": "Paris."}, "rejected": {"from": "gpt", "value": "Lyon."}},
        {"system": "Be brief.", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hey"}, {"from": "human", "value": "Weather in Paris?"}],
         "chosen": [{"from": "function_call", "value": '{"name": "lookup", "arguments": {"city": "Paris"}}'}], "rejected": {"from": "gpt", "value": "Sunny."},
         "tools": json.dumps([TOOLS[0]["function"]]), "id": 3}],
    "alpaca_dpo": [
        {"instruction": "Add the numbers.", "input": "2 3", "chosen": "5", "rejected": "6"},
        {"instruction": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "system": "Be brief.", "history": [["hi", "hey"]], "id": 9}],
    "lf_v1_dpo": [
        {"chosen_messages": [{"role": "user", "content": [{"type": "text", "value": "2+2?"}], "loss_weight": 0.0}, {"role": "assistant", "content": [{"type": "text", "value": "4"}], "loss_weight": 1.0}],
         "rejected_messages": [{"role": "user", "content": [{"type": "text", "value": "2+2?"}], "loss_weight": 0.0}, {"role": "assistant", "content": [{"type": "text", "value": "5"}], "loss_weight": 1.0}],
         "source": "demo"}]}

def records(p): return [o for _, o in read_items(p)[0]]

@pytest.mark.parametrize("fmt", PREFERENCE_FORMATS)
@pytest.mark.parametrize("ext", [".jsonl", ".json"])
def test_each_format_round_trips_losslessly(tmp_path, fmt, ext):
    src = tmp_path/f"pairs{ext}"
    src.write_text(json.dumps(SAMPLES[fmt]) if ext == ".json" else "".join(json.dumps(r) + "\n" for r in SAMPLES[fmt]))
    assert detect_format(src) == fmt
    ps = read_preferences(src)
    assert isinstance(ps, PreferenceDataset) and len(ps) == len(SAMPLES[fmt]) and all(p.chosen and p.rejected for p in ps)
    back = write_dataset(ps, tmp_path/f"back{ext}", fmt)                       # in its own format: the very same records
    assert [json.dumps(r) for r in records(back)] == [json.dumps(r) for r in SAMPLES[fmt]]
    via = write_dataset(ps, tmp_path/"via.jsonl", "openai_dpo")               # through OpenAI's DPO format: the same pairs
    assert detect_format(via) == "openai_dpo"
    again = read_preferences(via)
    assert [p.to_dict() for p in again] == [p.to_dict() for p in ps]
    rep = validate_file(via, min_examples=1)
    assert [(i.line, i.kind) for i in rep.errors] == ([(4, "missing_messages")] if fmt == "trl_dpo" else [])   # TRL's prompt-less string pair has no prompt for OpenAI

def test_conversions_between_formats_keep_the_pairs(tmp_path):
    ps = read_preferences_of(tmp_path, "sharegpt_dpo")
    for fmt in ("trl_dpo", "lf_v1_dpo", "openai_dpo"):
        p = write_dataset(ps, tmp_path/f"x.{fmt}.jsonl", fmt)
        assert detect_format(p) == fmt
        assert [q.to_dict() for q in read_preferences(p)] == [q.to_dict() for q in ps]

def read_preferences_of(tmp_path, fmt):
    (tmp_path/"in.json").write_text(json.dumps(SAMPLES[fmt]))
    return read_preferences(tmp_path/"in.json")

def test_what_a_format_cannot_hold_stops_with_its_location(tmp_path):
    ps = read_preferences_of(tmp_path, "sharegpt_dpo")
    with pytest.raises(DataError, match=r"in\.json:\d+: \[1\]\..*cannot be expressed in Alpaca preference"): export_records(ps, "alpaca_dpo")
    recs, dropped = export_records(ps, "alpaca_dpo", lossy=True)
    assert len(recs) == 1 and dropped["whole records"] == 1
    with pytest.raises(DataError, match="no place for rejected answers"): export_records(ps, "openai")   # chat data: refuse, or count with lossy
    recs, dropped = export_records(ps, "openai", lossy=True)
    assert dropped["rejected answers"] == 2 and recs[0]["messages"][-1] == {"role": "assistant", "content": "Paris."}

def test_reader_errors_name_file_line_and_field(tmp_path):
    bad = dict(SAMPLES["lf_v1_dpo"][0])
    bad["rejected_messages"] = [{"role": "user", "content": [{"type": "text", "value": "3+3?"}]}] + bad["rejected_messages"][1:]
    p = tmp_path/"bad.jsonl"
    p.write_text(json.dumps(SAMPLES["lf_v1_dpo"][0]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: rejected_messages\[0\]: the prompt differs"): read_preferences(p)
    q = tmp_path/"q.json"
    q.write_text(json.dumps([{"conversations": [{"from": "human", "value": "x"}], "chosen": {"from": "alien", "value": "y"}, "rejected": {"from": "gpt", "value": "z"}}]))
    with pytest.raises(DataError, match=r"q\.json:1: \[0\]\.chosen\.from: unknown or missing speaker 'alien'"): read_preferences(q)
    with pytest.raises(DataError, match=r"ShareGPT preference data \(.*\) is preference data, not chat"): read_dataset(q)

def test_validation_catches_what_breaks_dpo(tmp_path):
    ok = lambda i: {"input": {"messages": [{"role": "user", "content": f"q{i}"}]}, "preferred_output": [{"role": "assistant", "content": "good"}],
                    "non_preferred_output": [{"role": "assistant", "content": "bad"}]}
    bad = [{**ok(90), "non_preferred_output": [{"role": "assistant", "content": "good"}]},                       # the same answer twice
           {**ok(91), "preferred_output": []},                                                                   # no answer
           {**ok(92), "non_preferred_output": [{"role": "assistant", "content": "  "}]},                         # an empty answer
           {**ok(93), "preferred_output": [{"role": "user", "content": "good"}]},                                # not the assistant's
           {"input": {"messages": [{"role": "user", "content": "long " * 400}]}, **{k: v for k, v in ok(94).items() if k != "input"}}]
    p = tmp_path/"d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in [ok(i) for i in range(10)] + bad))
    rep = validate_file(p, max_tokens=300)
    assert [(i.line, i.field, i.kind) for i in rep.errors] == [
        (11, "non_preferred_output", "identical_outputs"), (12, "preferred_output", "empty_output"),
        (13, "non_preferred_output[0].content", "missing_content"), (14, "preferred_output[0].role", "invalid_output_role"),
        (15, "input.messages", "prompt_too_long")]
    assert rep.stats["n_examples"] == 10 and rep.stats["cost"]["method"] == "dpo"
    rc, out, err = run_cli("validate", p, "--max-tokens", "300")
    assert rc == 1 and "d.jsonl:11: non_preferred_output: the non-preferred output is the same" in out

def test_dpo_cost_counts_both_sides():
    assert estimate_cost([1000] * 100, "gpt-4o-mini", method="dpo")["estimated_usd"] == estimate_cost([1000] * 100, "gpt-4o-mini")["estimated_usd"]
    assert estimate_cost([1000] * 100, "gpt-3.5-turbo-0125", method="dpo")["estimated_usd"] is None     # no DPO on that model
    one = validate_file_of([{"input": {"messages": [{"role": "user", "content": "hi"}]}, "preferred_output": [{"role": "assistant", "content": "hello there"}],
                             "non_preferred_output": [{"role": "assistant", "content": "no"}]}])
    from finetune_nb.data import count_tokens
    both = count_tokens([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]) + count_tokens([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}])
    assert one.stats["tokens_total"] == both

def validate_file_of(recs, tmp=Path("/tmp")):
    import tempfile
    d = Path(tempfile.mkdtemp())
    (d/"v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return validate_file(d/"v.jsonl", min_examples=1)

def test_split_keeps_pairs(tmp_path):
    ps = read_preferences_of(tmp_path, "trl_dpo")
    tr, va = split(ps, 0.25, seed=1)
    assert isinstance(tr, PreferenceDataset) and (len(tr), len(va)) == (3, 1)
    assert sorted(json.dumps(p.to_dict()) for p in tr + va) == sorted(json.dumps(p.to_dict()) for p in ps)

@need_real
@pytest.mark.parametrize("name,fmt,n,n_prompt", [("lf_dpo_en_demo.json", "sharegpt_dpo", 300, None), ("lf_v1_dpo_demo.jsonl", "lf_v1_dpo", 10, 2)])
def test_real_llama_factory_preference_files(tmp_path, name, fmt, n, n_prompt):
    src = REAL/name
    assert detect_format(src) == fmt
    ps = read_preferences(src)
    assert len(ps) == n == len(records(src))
    assert all(p.prompt.messages and [m.role for m in p.chosen] == ["assistant"] == [m.role for m in p.rejected] for p in ps)
    if n_prompt: assert {len(p.prompt.messages) for p in ps} == {n_prompt}
    back = write_dataset(ps, tmp_path/f"back{src.suffix}", fmt)
    assert [json.dumps(r, ensure_ascii=False) for r in records(back)] == [json.dumps(r, ensure_ascii=False) for r in records(src)]
    rep = validate_file(src)
    assert rep.ok and rep.stats["n_examples"] + rep.counts()["warnings"].get("duplicate", 0) == n and rep.stats["cost"]["method"] == "dpo"
    rc, out, err = run_cli("convert", src, tmp_path/"o.jsonl", "--to", "openai_dpo")
    assert rc == 0, err
    assert [p.to_dict() for p in read_preferences(tmp_path/"o.jsonl")] == [p.to_dict() for p in ps]
    res = split_file(src, tmp_path, val_frac=0.1, seed=0)
    assert res["format"] == fmt and res["n_train"] + res["n_val"] == n
