"""Tool calling end to end (issue 15): the trainer renders tools and trains the assistant's tool-call tokens, the
model's calls come back as OpenAI `tool_calls` from the local client and the real server (plain and streamed, valid
against OpenAI's spec, read by the openai SDK), and the evaluator scores them. Real parts: the embedded tiny model,
the cookbook's drone file from ../shared/realdata, a `finetune-nb serve` process on loopback, the openai SDK."""
import json, math
from pathlib import Path
import pytest

from test_openapi_conformance import spec, validate, route_schema, sse_chunks   # the spec fixtures (module-scoped)

ROOT = Path(__file__).resolve().parent.parent
DRONE = ROOT.parent/"shared"/"realdata"/"oc_drone_training.jsonl"
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
           {"type": "function", "function": {"name": "reject_request", "parameters": {"type": "object", "properties": {}}}}]
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]
CALL = {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}


@pytest.fixture(autouse=True)
def _one_thread():
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def _drone()->list[dict]:
    if not DRONE.exists(): pytest.skip(f"{DRONE} not found (it lives in ../shared, outside the repo)")
    return [json.loads(l) for l in DRONE.read_text().splitlines() if l.strip()]

def _tok(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)

def _call_text(call:dict)->str:
    "How the tiny template writes one call (arguments re-serialised by the template's `tojson`)."
    f = call["function"]
    return f'<tool_call>{{"name": "{f["name"]}", "arguments": {json.dumps(json.loads(f["arguments"]), ensure_ascii=False)}}}</tool_call>'

def _runs(labels)->list[tuple[int,int]]:
    "Half-open ranges of trained (labelled) positions."
    from finetune_nb.lora import _runs as runs
    return runs([l != -100 for l in labels])

# --- training ---------------------------------------------------------------------------------------------------

def test_drone_file_labels_are_exactly_the_tool_calls(tiny_model_path):
    from finetune_nb.lora import tokenize_dataset
    recs, tok = _drone(), _tok(tiny_model_path)
    ds, rep = tokenize_dataset(tok, str(DRONE), max_length=512)
    assert rep["examples"] == len(recs) == 103 and rep["kept"] == len(recs), rep
    for r, f in zip(recs, ds):
        asst = [m for m in r["messages"] if m["role"] == "assistant"]
        want = "".join("".join(_call_text(c) for c in m.get("tool_calls") or []) + (m.get("content") or "") + "<|eos|>" for m in asst)
        trained = tok.decode([t for t, l in zip(f["input_ids"], f["labels"]) if l != -100])
        assert trained == want, (trained, want)
        assert len(_runs(f["labels"])) == len(asst)
        # the tool definitions are in the (untrained) prompt
        prompt = tok.decode(f["input_ids"][:_runs(f["labels"])[0][0]])
        assert all(t["function"]["name"] + "(" in prompt for t in r["tools"])

def test_tool_result_turn_is_context_and_both_assistant_turns_are_trained(tiny_model_path):
    from finetune_nb.lora import tokenize_conversation
    tok = _tok(tiny_model_path)
    rec = {"tools": WEATHER, "messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [CALL]},
                                               {"role": "tool", "tool_call_id": "call_abc", "content": "Sunny, 21 C"},
                                               {"role": "assistant", "content": "It is sunny in Oslo."}]}
    f = tokenize_conversation(tok, rec)
    runs = _runs(f["labels"])
    assert [tok.decode(f["input_ids"][a:b]) for a, b in runs] == [_call_text(CALL) + "<|eos|>", "It is sunny in Oslo.<|eos|>"]
    between = tok.decode(f["input_ids"][runs[0][1]:runs[1][0]])
    assert "<|tool|>" in between and "Sunny, 21 C" in between   # the tool result: context only
    # weight 0 on the call turn: the call stays in the context, only the answer is trained
    rec["messages"][1]["weight"] = 0
    assert tok.decode([t for t, l in zip(*(tokenize_conversation(tok, rec)[k] for k in ("input_ids", "labels"))) if l != -100]) == "It is sunny in Oslo.<|eos|>"

def test_drone_file_trains_a_few_steps(tiny_model_path, tmp_path):
    from finetune_nb.lora import LocalFineTuner, TrainingConfig
    _drone()
    cfg = TrainingConfig(max_steps=3, batch_size=2, grad_accum=1, logging_steps=1, progress=False, save_steps=None, max_length=512)
    res = LocalFineTuner(tiny_model_path, training_config=cfg, output_dir=tmp_path).train(str(DRONE))
    assert res.steps == 3 and len(res.loss_history) == 3 and all(math.isfinite(h["loss"]) for h in res.loss_history)
    assert res.data_report["kept"] == 103 and res.data_report["trainable_tokens"] > 103 * 10

# --- a model that calls tools -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def caller_dir(tiny_model_path, tmp_path_factory):
    "The tiny model, fully fine-tuned until it answers the weather question with `get_weather(city=Oslo)`."
    from finetune_nb.lora import LocalFineTuner, TrainingConfig
    import torch
    torch.set_num_threads(1)
    rec = {"tools": WEATHER, "messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [CALL]}]}
    out = tmp_path_factory.mktemp("caller")
    cfg = TrainingConfig(method="full", max_steps=120, batch_size=4, grad_accum=1, lr=3e-3, logging_steps=10, progress=False,
                         save_steps=None, max_length=256, warmup=0)
    res = LocalFineTuner(tiny_model_path, training_config=cfg, output_dir=out).train([rec] * 8)
    return res.adapter_dir

def test_local_client_returns_tool_calls(caller_dir):
    from openai.types.chat import ChatCompletionMessageToolCall
    from finetune_nb.infer import LocalChatClient
    c = LocalChatClient(str(caller_dir))
    r = c.chat.completions.create(messages=ASK, tools=WEATHER, temperature=0, max_tokens=64)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None, ch
    call = ch.message.tool_calls[0]
    assert isinstance(call, ChatCompletionMessageToolCall) and call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Oslo"})
    # tool_choice="none": the same text comes back as plain content
    r = c.chat.completions.create(messages=ASK, tools=WEATHER, tool_choice="none", temperature=0, max_tokens=64)
    assert r.choices[0].message.tool_calls is None and "<tool_call>" in r.choices[0].message.content
    # a named function: the reply is started with that call
    r = c.chat.completions.create(messages=ASK, tools=WEATHER, tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0, max_tokens=64)
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    # streamed: one tool-call delta, finish_reason tool_calls
    chunks = list(c.chat.completions.create(messages=ASK, tools=WEATHER, temperature=0, max_tokens=64, stream=True))
    deltas = [tc for ch in chunks for choice in ch.choices for tc in (choice.delta.tool_calls or [])]
    assert [(d.index, d.function.name, json.loads(d.function.arguments)) for d in deltas] == [(0, "get_weather", {"city": "Oslo"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

def test_server_tool_calls_conform_and_sdk_reads_them(caller_dir, start_server, spec, validate):
    import httpx
    from openai.types.chat import ChatCompletionMessageToolCall
    srv = start_server("tools", base_model=str(caller_dir))
    model = str(caller_dir)
    body = {"model": model, "messages": ASK, "tools": WEATHER, "temperature": 0, "max_tokens": 64}
    schema = route_schema(spec, "post", "/chat/completions")
    r = httpx.post(srv.base_url + "/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    got = validate(r.json(), schema)
    assert got["choices"][0]["finish_reason"] == "tool_calls" and got["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    r = httpx.post(srv.base_url + "/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}, timeout=120)
    chunks = sse_chunks(r.text)
    for c in chunks: validate(c, route_schema(spec, "post", "/chat/completions", "text/event-stream"))
    calls = [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [(0, "get_weather", {"city": "Oslo"})]
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["tool_calls"]
    # the openai SDK, plain and streamed
    client = srv.client()
    m = client.chat.completions.create(**body).choices[0].message
    assert isinstance(m.tool_calls[0], ChatCompletionMessageToolCall) and json.loads(m.tool_calls[0].function.arguments) == {"city": "Oslo"}
    streamed = [tc for ch in client.chat.completions.create(**body, stream=True) for c in ch.choices for tc in (c.delta.tool_calls or [])]
    assert streamed[0].function.name == "get_weather" and streamed[0].id.startswith("call_")
    # the conversation goes on: the assistant's call and the tool's result are accepted as input
    follow = ASK + [{"role": "assistant", "content": None, "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "call_abc", "content": "Sunny"}]
    r = client.chat.completions.create(model=model, messages=follow, tools=WEATHER, temperature=0, max_tokens=5, parallel_tool_calls=False)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # untrusted input is a 400, never a 500
    for bad in ({"tool_choice": {"type": "function", "function": {"name": "no_such_fn"}}},
                {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
                {"tools": "nope"}, {"tool_choice": "sometimes"},
                {"messages": ASK + [{"role": "tool", "tool_call_id": "call_nope", "content": "x"}]},   # answers no call
                {"messages": ASK + [{"role": "assistant", "tool_calls": [{"id": "x", "type": "function", "function": {"name": "f"}}]}]}):
        r = httpx.post(srv.base_url + "/chat/completions", json={**body, **bad}, timeout=60)
        assert r.status_code == 400, (bad, r.status_code, r.text[:300])
    odd = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": 5}}}]   # a schema the template can't list
    r = httpx.post(srv.base_url + "/chat/completions", json={**body, "tools": odd, "max_tokens": 3}, timeout=60)
    assert r.status_code in (200, 400), (r.status_code, r.text[:300])

# --- evaluation -------------------------------------------------------------------------------------------------

def test_evaluator_scores_tool_calls(caller_dir, tmp_path):
    from finetune_nb.infer import LocalChatClient
    from finetune_nb.evaluate import FineTuneEvaluator, TOOL_METRICS
    c = LocalChatClient(str(caller_dir))
    held = [{"tools": WEATHER, "messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [CALL]}]},
            {"tools": WEATHER, "messages": ASK + [{"role": "assistant", "content": None, "tool_calls": [
                {**CALL, "function": {"name": "get_weather", "arguments": '{"city": "Bergen"}'}}]}]}]
    ev = FineTuneEvaluator(c, c, "base", "ft", metrics=TOOL_METRICS, max_tokens=64, progress=False)
    res = ev.evaluate_dataset(held)
    assert [r.fine_tuned.metrics for r in res] == [
        {"tool_name_accuracy": 1.0, "tool_args_match": 1.0, "tool_call_exact_match": 1.0},
        {"tool_name_accuracy": 1.0, "tool_args_match": 0.0, "tool_call_exact_match": 0.0}]
    from finetune_nb.evaluate import write_report
    files = write_report(ev.summary(res, n_boot=50), tmp_path/"report", res)
    fine = json.loads(Path(files["metrics"]).read_text())["summary"]
    assert "tool_call_exact_match" in json.dumps(fine) and "tool_call_exact_match" in Path(files["report"]).read_text()
