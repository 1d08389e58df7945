"Data formats and tool validation on small inline cases: TRL, ShareGPT tags, LLaMA-Factory v1, error locations, fuzzing."
import json
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from finetune_nb.core import DataError, ConfigError
from finetune_nb.data import (read_dataset, write_dataset, export_records, validate_file, validate_records, count_tokens, detect_format,
                              to_conversation, normalize_messages, Conversation, ShareGPTTags, TokenCounter, FORMATS)

CALL = {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look up.", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
TOOLREC = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "find x"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                        {"role": "tool", "tool_call_id": "call_9", "content": "found"}, {"role": "assistant", "content": "It is found.", "weight": 1}],
           "tools": TOOLS, "parallel_tool_calls": True, "metadata": {"k": 1}, "id": "r1"}

def jsonl(path, recs): path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)); return path
def lines(path): return [json.loads(l) for l in path.read_text().splitlines()]

@pytest.mark.parametrize("fmt", ["sharegpt", "trl", "lf_v1", "openai"])
def test_tool_record_round_trips_through_every_chat_format(tmp_path, fmt):
    rec = json.loads(json.dumps(TOOLREC))
    if fmt == "lf_v1":  # its content is a list of parts: an explicit null beside tool calls has no place there
        with pytest.raises(DataError, match=r"example 0 cannot be expressed in LLaMA-Factory v1: messages\[2\]\.content: no place for null content"):
            export_records([rec], fmt)
        del rec["messages"][2]["content"]
    p = write_dataset([rec] * 2, tmp_path/f"x.{fmt}.jsonl", fmt)
    assert detect_format(p) == fmt
    back = write_dataset(read_dataset(p), tmp_path/"back.jsonl", "openai")
    assert [json.dumps(r) for r in lines(back)] == [json.dumps(rec)] * 2

def test_trl_standard_and_conversational(tmp_path):
    p = jsonl(tmp_path/"t.jsonl", [{"prompt": "2+2?", "completion": "4"},
                                   {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hey"}], "tools": [TOOLS[0]["function"]]}])
    ds = read_dataset(p)
    assert ds.to_records()[0] == {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    assert ds[1].tools == TOOLS                                   # bare JSON-schema functions become OpenAI tools ...
    assert [json.dumps(r) for r in lines(write_dataset(ds, tmp_path/"u.jsonl", "trl"))] == [json.dumps(r) for r in lines(p)]  # ... and go back bare
    with pytest.raises(DataError, match=r"t2\.jsonl:1: prompt: TRL 'prompt' and 'completion'"):
        read_dataset(jsonl(tmp_path/"t2.jsonl", [{"prompt": "x", "completion": [{"role": "assistant", "content": "y"}]}]), format="trl")

def test_sharegpt_custom_tags(tmp_path):
    rec = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    tags = ShareGPTTags.parse(["messages=messages", "role_tag=role", "content_tag=content", "user_tag=user", "assistant_tag=assistant"])
    p = write_dataset([rec], tmp_path/"s.json", "sharegpt", tags=tags)
    assert json.loads(p.read_text()) == [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    q = jsonl(tmp_path/"q.jsonl", [{"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}])
    with pytest.raises(DataError, match=r"q\.jsonl:1: conversations\[1\]\.from: unknown or missing speaker 'bot'"): read_dataset(q)
    assert read_dataset(q, tags={"assistant_tag": "bot"}).to_records() == [rec]
    with pytest.raises(ConfigError, match="unknown ShareGPT tag"): ShareGPTTags.parse({"speaker": "x"})

def test_json_array_errors_name_file_line_index_and_field(tmp_path):
    p = tmp_path/"a.json"
    p.write_text(json.dumps([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                             {"conversations": [{"from": "alien", "value": "x"}]}], indent=2))
    with pytest.raises(DataError, match=r"a\.json:14: \[1\]\.conversations\[0\]\.from: unknown or missing speaker 'alien'"): read_dataset(p)
    p.write_text('[{"instruction": "i", "output": "o"},\n [1, 2]]')
    with pytest.raises(DataError) as e: read_dataset(p, format="alpaca")
    assert "a.json:2: [1]" in str(e.value) and "AttributeError" not in str(e.value) and ":0:" not in str(e.value)
    p.write_text('[{"instruction": "i", "output": "o"},\n {"instruction": }]')
    with pytest.raises(DataError, match=r"a\.json:2: \[1\]: invalid JSON"): read_dataset(p)

def test_lf_v1_parts_and_loss_weight(tmp_path):
    rec = {"messages": [{"role": "user", "content": [{"type": "text", "value": "hi"}], "loss_weight": 0.0},
                        {"role": "assistant", "content": [{"type": "text", "value": "a"}, {"type": "text", "value": "b"}], "loss_weight": 1.0}]}
    c = read_dataset(jsonl(tmp_path/"v1.jsonl", [rec]))[0]
    assert c.to_dict() == {"messages": [{"role": "user", "content": "hi", "weight": 0},
                                        {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "weight": 1}]}
    assert export_records([c], "lf_v1")[0] == [rec]
    assert normalize_messages(c, keep_weight=True)[1] == {"role": "assistant", "content": "ab", "weight": 1}
    rep = validate_records([c], min_examples=1)     # OpenAI takes `weight` on assistant messages only: the user's is flagged, not fatal
    assert rep.ok and [(w.field, w.kind) for w in rep.warnings] == [("messages[0].weight", "weight_ignored")]

TOOL_CASES = [  # (change to TOOLREC, expected error kind, field)
    (lambda r: r["messages"][3].pop("tool_call_id"), "missing_tool_call_id", "messages[3].tool_call_id"),
    (lambda r: r["messages"][3].update(tool_call_id="call_x"), "unmatched_tool_call_id", "messages[3].tool_call_id"),
    (lambda r: r["messages"][2]["tool_calls"][0]["function"].update(arguments="{x"), "invalid_arguments", "messages[2].tool_calls[0].function.arguments"),
    (lambda r: r["messages"][2]["tool_calls"][0]["function"].update(name="other"), "unknown_function", "messages[2].tool_calls[0].function.name"),
    (lambda r: r.pop("tools"), "unknown_function", "messages[2].tool_calls[0].function.name"),
    (lambda r: r["tools"][0]["function"].update(name="has space"), "invalid_function_name", "tools[0].function.name"),
    (lambda r: r["tools"][0]["function"].update(parameters={"type": "dict"}), "invalid_parameters_schema", "tools[0].function.parameters"),
    (lambda r: r["tools"].append(r["tools"][0]), "duplicate_function", "tools[1].function.name"),
    (lambda r: r["tools"].append({"function": {"name": "x"}}), "invalid_tools", "tools[1]"),
    (lambda r: r["messages"][2]["tool_calls"][0].update(type="code"), "invalid_tool_call", "messages[2].tool_calls[0].type"),
    (lambda r: r["messages"][1].update(content=[{"type": "video", "url": "v"}]), "invalid_content_part", "messages[1].content[0]"),
    (lambda r: r["messages"][1].update(content=[{"type": "image_url", "image_url": "u"}]), "invalid_content_part", "messages[1].content[0].image_url"),
    (lambda r: r.update(parallel_tool_calls="yes"), "invalid_parallel_tool_calls", "parallel_tool_calls"),
]

def test_tool_validation_kinds(tmp_path):
    recs = [json.loads(json.dumps(TOOLREC)) for _ in range(len(TOOL_CASES) + 10)]
    for k, r in enumerate(recs[10:]): r["messages"][1]["content"] = f"find {k}"     # distinct, so no duplicates
    for k, (change, _, _) in enumerate(TOOL_CASES): change(recs[10 + k])
    for k, r in enumerate(recs[:10]): r["id"] = k
    rep = validate_file(jsonl(tmp_path/"t.jsonl", recs))
    got = {}
    for i in rep.errors: got.setdefault(i.line, (i.kind, i.field))      # the first error on each line
    assert sorted(got) == list(range(11, 11 + len(TOOL_CASES))) and rep.stats["n_examples"] == 10
    for k, (_, kind, fld) in enumerate(TOOL_CASES): assert got[11 + k] == (kind, fld), (k, got.get(11 + k))
    assert validate_records([TOOLREC], min_examples=1).ok

def test_tool_token_counts():
    tc = TokenCounter()
    total, asst, tdef, tcall = tc.record(TOOLREC)
    assert tdef == tc.tools(TOOLS) > 0 and tcall == 3 + tc("lookup") + tc('{"q": "x"}')
    assert asst == tcall + tc("It is found.")
    assert total == tc.messages(TOOLREC["messages"]) + tdef == count_tokens(TOOLREC) == count_tokens(Conversation.from_dict(TOOLREC))
    t35 = TokenCounter("gpt-3.5-turbo")   # the cookbook's rule: 10 per function on gpt-3.5/gpt-4 (7 on gpt-4o), 12 at the end, 3 + 3 per property
    assert t35.tools(TOOLS) == 12 + 10 + t35("lookup:Look up") + 3 + 3 + t35("q:string:")
    assert tc.tools(TOOLS) == 12 + 7 + tc("lookup:Look up") + 3 + 3 + tc("q:string:")

def test_lossy_counts_what_it_drops(tmp_path):
    with pytest.raises(DataError, match=r"example 0 cannot be expressed in Alpaca: tools"): export_records([TOOLREC], "alpaca")
    recs, dropped = export_records([TOOLREC], "alpaca", lossy=True)
    assert recs == [{"instruction": "find x", "input": "", "output": "It is found.", "system": "s", "metadata": {"k": 1}, "id": "r1"}]
    assert dropped == {"tools": 1, "parallel_tool_calls": 1, "tool calls": 1, "tool messages": 1, "weight": 1}

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                           lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.sampled_from(
                               ["messages", "conversations", "from", "value", "role", "content", "tool_calls", "tools", "function", "name", "arguments",
                                "instruction", "output", "input", "history", "prompt", "completion", "type", "text", "loss_weight", "tool_call_id", "system", "id"]), ch, max_size=5),
                           max_leaves=25)

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=st.lists(json_values, min_size=1, max_size=5), fmt=st.sampled_from(FORMATS), to=st.sampled_from(FORMATS), lossy=st.booleans())
def test_fuzz_readers_and_writers_raise_only_data_errors(tmp_path, recs, fmt, to, lossy):
    p = tmp_path/"f.json"; p.write_text(json.dumps(recs))
    try: ds = read_dataset(p, format=fmt)
    except DataError: return
    try: export_records(ds, to, lossy=lossy)
    except DataError: pass
    assert validate_file(p, format=fmt) is not None

def test_alpaca_columns_survive_an_alpaca_round_trip(tmp_path):
    src = [{"instruction": "Sum", "input": "2 3", "output": "5", "system": "", "id": 7},              # empty system column, an extra key
           {"instruction": "Hi", "response": "Hello", "history": [["a", "b"], ["c", "d"]]},         # GPTeacher's answer key, no input key
           {"system": "Be brief.", "instruction": "Name a colour", "input": "", "output": "Red"}]   # another key order
    p = tmp_path/"a.json"; p.write_text(json.dumps(src))
    ds = read_dataset(p)
    assert [m.role for m in ds[1].messages] == ["user", "assistant"] * 3 and ds[1].messages[-1].content == "Hello"
    assert ds[0].to_dict() == {"messages": [{"role": "user", "content": "Sum\n\n2 3"}, {"role": "assistant", "content": "5"}], "id": 7}
    out = write_dataset(ds, tmp_path/"b.json", "alpaca")
    assert [json.dumps(r) for r in json.loads(out.read_text())] == [json.dumps(r) for r in src]
    ds[2].messages.pop(0)                                                           # an edit drops the system prompt: it is not revived
    assert "system" not in export_records(ds, "alpaca")[0][2]

@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_deeply_nested_records_do_not_crash(tmp_path, suffix):
    from finetune_nb.data import dedupe_file, split_file
    rec = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "metadata": ' + "[" * 985 + '"x"' + "]" * 985 + "}"
    p = tmp_path/f"deep{suffix}"; p.write_text(f"[{rec}]" if suffix == ".json" else rec + "\n")   # near the parser's depth limit
    rep = validate_file(p, min_examples=1)   # read (n_lines 1), or reported as too deep to parse from this stack: never a crash
    assert rep.stats["n_lines"] == 1 or rep.errors[0].kind == "invalid_json"
    for f in (lambda: dedupe_file(p, tmp_path/f"d{suffix}"), lambda: split_file(p, tmp_path, 0.5), lambda: export_records(read_dataset(p), "sharegpt")):
        try: f()
        except DataError: pass
    (tmp_path/"deeper.json").write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    with pytest.raises(DataError, match="deeper.json:1: \\[0\\]"): read_dataset(tmp_path/"deeper.json")
    assert [i.kind for i in validate_file(tmp_path/"deeper.json").errors][0] == "invalid_json"
