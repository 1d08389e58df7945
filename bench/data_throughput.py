"""Validate + exact-token-count throughput on a generated 50k-example chat file.

Baseline: the OpenAI cookbook's plain-Python recipe (json.loads, per-example format checks, per-message
`encoding.encode` for the token counts), run in the same process on the same file.
Ours: `finetune_nb.data.validate_file` (all checks incl. duplicates, token counts, stats, cost).
Tool data (tools + assistant tool_calls + tool results, like the cookbook's drone file) is timed separately: the
cookbook recipe has no rule for it (its counter fails on a `tool_calls` list), so it is ours alone, with the share of
tokens that tool definitions and calls make up.
Last line: examples_per_s=N ratio_vs_cookbook=R tool_examples_per_s=T tool_tokens_per_example=K tool_share=S
"""
import json, random, sys, tempfile, time
from collections import defaultdict
from pathlib import Path
from finetune_nb.data import validate_file, get_encoding

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000

def make_file(path:Path, n:int, seed:int=0):
    rng = random.Random(seed)
    products = ["order", "invoice", "password", "subscription", "refund", "shipment", "account", "app", "card", "plan"]
    moods = ["I'm really upset", "thanks in advance", "this is urgent", "no rush", "please help", "this keeps happening"]
    system = "You are a support triage assistant. Reply with JSON: category, priority, sentiment."
    with open(path, "w") as f:
        for i in range(n):
            user = f"My {rng.choice(products)} #{rng.randint(1000, 99999)} has a problem: {rng.choice(moods)}. Ticket {i}."
            asst = json.dumps({"category": rng.choice(products), "priority": rng.choice(["low", "medium", "high"]), "sentiment": rng.choice(["negative", "neutral", "positive"])})
            f.write(json.dumps({"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}, {"role": "assistant", "content": asst}]}) + "\n")

def make_tool_file(path:Path, n:int, seed:int=0):
    "Drone-style tool-calling records: 6 tool definitions, one call with JSON arguments, its result, a final reply."
    rng = random.Random(seed)
    prop = lambda t, d, **kw: {"type": t, "description": d, **kw}
    fns = [("takeoff", {"altitude": prop("integer", "Metres above ground.", minimum=0)}), ("land", {"where": prop("string", "Landing spot.", enum=["here", "home", "custom"])}),
           ("move", {"direction": prop("string", "Which way.", enum=["forward", "back", "left", "right"]), "distance": prop("integer", "Metres.")}),
           ("camera", {"mode": prop("string", "Capture mode.", enum=["photo", "video"]), "seconds": prop("integer", "Video length.")}),
           ("lights", {"on": prop("boolean", "Lights on or off.")}), ("home", {})]
    tools = [{"type": "function", "function": {"name": f, "description": f"Drone {f}.", "parameters": {"type": "object", "properties": ps, "required": list(ps)[:1]}}} for f, ps in fns]
    with open(path, "w") as f:
        for i in range(n):
            alt = rng.randint(5, 500)
            call = {"id": f"call_{i}", "type": "function", "function": {"name": "takeoff", "arguments": json.dumps({"altitude": alt})}}
            msgs = [{"role": "system", "content": "You control a drone. Call one of your functions."}, {"role": "user", "content": f"Take off to {alt} metres, run {i}."},
                    {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps({"ok": True, "altitude": alt})},
                    {"role": "assistant", "content": f"Airborne at {alt} m."}]
            f.write(json.dumps({"messages": msgs, "tools": tools, "parallel_tool_calls": False}) + "\n")

def cookbook(path:Path):
    "The OpenAI cookbook's data preparation recipe, as published (format checks + num_tokens_from_messages)."
    encoding = get_encoding("gpt-4o-mini")  # the same model's encoding as ours, so the counts must agree
    with open(path, "r", encoding="utf-8") as f: dataset = [json.loads(line) for line in f]
    format_errors = defaultdict(int)
    for ex in dataset:
        if not isinstance(ex, dict): format_errors["data_type"] += 1; continue
        messages = ex.get("messages", None)
        if not messages: format_errors["missing_messages_list"] += 1; continue
        for message in messages:
            if "role" not in message or "content" not in message: format_errors["message_missing_key"] += 1
            if any(k not in ("role", "content", "name", "function_call", "weight") for k in message): format_errors["message_unrecognized_key"] += 1
            if message.get("role", None) not in ("system", "user", "assistant", "function"): format_errors["unrecognized_role"] += 1
            content = message.get("content", None); function_call = message.get("function_call", None)
            if (not content and not function_call) or not isinstance(content, str): format_errors["missing_content"] += 1
        if not any(message.get("role", None) == "assistant" for message in messages): format_errors["example_missing_assistant_message"] += 1
    def num_tokens_from_messages(messages, tokens_per_message=3, tokens_per_name=1):
        num_tokens = 0
        for message in messages:
            num_tokens += tokens_per_message
            for key, value in message.items():
                num_tokens += len(encoding.encode(value))
                if key == "name": num_tokens += tokens_per_name
        return num_tokens + 3
    def num_assistant_tokens_from_messages(messages):
        return sum(len(encoding.encode(m["content"])) for m in messages if m["role"] == "assistant")
    n_tokens = [num_tokens_from_messages(ex["messages"]) for ex in dataset]
    n_asst = [num_assistant_tokens_from_messages(ex["messages"]) for ex in dataset]
    return len(dataset), sum(n_tokens), sum(n_asst), dict(format_errors)

def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t)
    return best, out

if __name__ == "__main__":
    path = Path(tempfile.mkdtemp())/"bench.jsonl"; make_file(path, N)
    get_encoding("cl100k_base"); get_encoding("gpt-4o-mini")  # load encodings outside the timing
    t_cb, (n, tok_cb, _, errs) = timed(lambda: cookbook(path))
    t_us, rep = timed(lambda: validate_file(path, model="gpt-4o-mini-2024-07-18"))
    assert n == N and rep.stats["n_examples"] == N and not errs and rep.ok, (rep, errs)
    assert tok_cb == rep.stats["tokens_total"], (tok_cb, rep.stats["tokens_total"])  # same exact counts
    print(f"{'recipe':<28}{'seconds':>10}{'examples/s':>14}{'tokens':>12}")
    print(f"{'cookbook (baseline)':<28}{t_cb:>10.3f}{N/t_cb:>14,.0f}{tok_cb:>12,}")
    print(f"{'finetune_nb validate_file':<28}{t_us:>10.3f}{N/t_us:>14,.0f}{rep.stats['tokens_total']:>12,}")
    print(f"(ours also checks duplicates, weights, limits, and reports per line; best of 3 runs, {N:,} examples)")
    NT = max(1, N // 5)
    tpath = path.parent/"tools.jsonl"; make_tool_file(tpath, NT)
    t_tools, trep = timed(lambda: validate_file(tpath, model="gpt-4o-mini-2024-07-18"))
    ts = trep.stats
    assert trep.ok and ts["n_examples"] == NT and ts["tool_definition_tokens"] > 0 and ts["tool_call_tokens"] > 0, trep
    share = (ts["tool_definition_tokens"] + ts["tool_call_tokens"]) / ts["tokens_total"]
    print(f"\ntool data ({NT:,} records: tools + tool_calls + tool results; checked: call ids, JSON arguments, schemas, names)")
    print(f"{'finetune_nb validate_file':<28}{t_tools:>10.3f}{NT/t_tools:>14,.0f}{ts['tokens_total']:>12,}")
    print(f"  tokens: {ts['tool_definition_tokens']:,} in tool definitions, {ts['tool_call_tokens']:,} in tool calls ({share:.0%} of all)")
    print(f"examples_per_s={N/t_us:.0f} ratio_vs_cookbook={t_cb/t_us:.2f} tool_examples_per_s={NT/t_tools:.0f} "
          f"tool_tokens_per_example={ts['tokens_total']/NT:.1f} tool_share={share:.2f}")
