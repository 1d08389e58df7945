"DataAugmenter with the real openai SDK over HTTP against the loopback fake's chat.completions."
import asyncio, json

import openai
import pytest
from fake_openai import FakeError, paraphrase_reply

from finetune_nb.augment import DataAugmenter, parse_paraphrases
from finetune_nb.core import ConfigError


def tickets(n):
    return [{"messages": [{"role": "system", "content": "Classify the ticket as JSON."},
                          {"role": "user", "content": f"Ticket {i}: my invoice is wrong"},
                          {"role": "assistant", "content": json.dumps({"category": "billing", "id": i})}]} for i in range(n)]


@pytest.fixture
def aclient(fake_openai):
    fake_openai.chat_reply = paraphrase_reply
    return openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test")


def run(coro): return asyncio.run(coro)


def test_variations_keep_answers_and_structure(aclient, fake_openai):
    src = tickets(6)
    res = run(DataAugmenter(aclient, num_variations=3, concurrency=4, progress=False).augment_async(src))
    assert res.ok and res.report.ok and res.requests == 6 and fake_openai.count("POST", "/v1/chat/completions") == 6
    assert len(res.records) == 18 and res.sources == [i for i in range(6) for _ in range(3)]
    for rec, s in zip(res.records, res.sources):
        orig = src[s]["messages"]
        m = rec["messages"]
        assert [x["role"] for x in m] == ["system", "user", "assistant"]
        assert m[0] == orig[0] and m[2] == orig[2]                       # system prompt and answer kept
        assert m[1]["content"] != orig[1]["content"] and f"Ticket {s}:" in m[1]["content"]
    assert res.all_records[:6] == src and len(res.all_records) == 24
    # the request asked the chosen model for 3 paraphrases of the user's text
    req = fake_openai.chat_requests[0]
    assert req["model"] == "gpt-4o-mini" and "3 different paraphrases" in req["messages"][0]["content"]
    assert req["messages"][1]["content"].startswith("Ticket ")


def test_concurrency_bound_respected(aclient, fake_openai):
    fake_openai.latency = {"/v1/chat/completions": 0.05}
    res = run(DataAugmenter(aclient, num_variations=1, concurrency=3, progress=False).augment_async(tickets(12)))
    assert len(res.records) == 12
    assert 2 <= fake_openai.max_in_flight <= 3
    fake_openai.max_in_flight = 0
    fresh = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test")   # a client per event loop
    run(DataAugmenter(fresh, num_variations=1, concurrency=1, progress=False).augment_async(tickets(4)))
    assert fake_openai.max_in_flight == 1


def test_dedup_against_source_and_each_other(aclient, fake_openai):
    def reply(req):
        t = req["messages"][-1]["content"]
        # "a" paraphrases to the source "b" (dup of the source), and twice to the same text (dup of each other)
        return {"a": '["B", "new one", "New one!"]', "b": '["fresh b"]', "c": '["  c  ", "C."]'}[t]
    fake_openai.chat_reply = reply
    src = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": t.upper()}]} for t in "abc"]
    res = run(DataAugmenter(aclient, num_variations=3, progress=False, max_retries=1, backoff=0.001).augment_async(src))
    assert [r["messages"][0]["content"] for r in res.records] == ["new one", "fresh b"]
    assert res.sources == [0, 1] and res.duplicates == 1
    # "c" only echoed itself: every request gave nothing usable, so it is reported, not dropped silently
    assert [(f.index, f.attempts) for f in res.failures] == [(2, 2)]
    assert "no usable paraphrases" in res.failures[0].error


def test_failures_reported_per_example(aclient, fake_openai):
    def reply(req):
        t = req["messages"][-1]["content"]
        if "Ticket 2:" in t: raise FakeError(500, "upstream exploded")
        if "Ticket 4:" in t: raise FakeError(400, "content policy violation")
        return paraphrase_reply(req)
    fake_openai.chat_reply = reply
    aug = DataAugmenter(aclient, num_variations=2, concurrency=4, max_retries=2, backoff=0.001, progress=False)
    res = run(aug.augment_async(tickets(6)))
    assert [(f.index, f.error, f.attempts) for f in res.failures] == [
        (2, "HTTP 500: upstream exploded", 3), (4, "HTTP 400: content policy violation", 1)]
    assert sorted(set(res.sources)) == [0, 1, 3, 5] and not res.ok
    # nothing silently dropped: every source example is accounted for
    assert set(res.sources) | {f.index for f in res.failures} == set(range(6))
    assert res.requests == 4 + 3 + 1 == fake_openai.count("POST", "/v1/chat/completions")


def test_429_then_success(aclient, fake_openai):
    fake_openai.fail("/v1/chat/completions", status=429, times=3)
    res = run(DataAugmenter(aclient, num_variations=2, concurrency=2, backoff=0.001, progress=False).augment_async(tickets(3)))
    assert res.ok and len(res.records) == 6
    assert res.requests == 6 == fake_openai.count("POST", "/v1/chat/completions")


def test_multi_turn_and_weights(aclient, fake_openai):
    conv = {"messages": [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "A1", "weight": 0},
                         {"role": "user", "content": "second question"}, {"role": "assistant", "content": "A2", "weight": 1}]}
    res = run(DataAugmenter(aclient, num_variations=2, progress=False).augment_async([conv]))
    assert res.ok and res.requests == 2 and len(res.records) == 2
    m = res.records[1]["messages"]
    assert "first question" in m[0]["content"] and "second question" in m[2]["content"]
    assert m[0]["content"] != "first question" and m[1] == conv["messages"][1] and m[3] == conv["messages"][3]
    assert conv["messages"][0]["content"] == "first question"          # the source is not mutated


def test_sync_client_path_and_sync_front_door(fake_openai, tmp_path):
    fake_openai.chat_reply = paraphrase_reply
    p = tmp_path/"train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in tickets(3)))
    sync = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test")
    res = DataAugmenter(sync, num_variations=2, concurrency=2, progress=False).augment(p)
    assert res.ok and len(res.records) == 6
    # an AsyncOpenAI augmenter called synchronously from inside a running loop (as in Jupyter)
    aug = DataAugmenter(openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test"), num_variations=1, progress=False)
    async def inside_loop(): return aug.augment(tickets(2)), aug.augment(tickets(2))
    r1, r2 = asyncio.run(inside_loop())
    assert len(r1.records) == len(r2.records) == 2


def test_no_user_turn_and_bad_args(aclient):
    res = run(DataAugmenter(aclient, progress=False).augment_async([{"messages": [{"role": "assistant", "content": "x"}]}]))
    assert [(f.index, f.error) for f in res.failures] == [(0, "no user message to paraphrase")] and res.records == []
    with pytest.raises(ConfigError, match="concurrency"):
        DataAugmenter(aclient, concurrency=0)


def test_parse_paraphrases():
    assert parse_paraphrases('["x", 3, "y"]') == ["x", "y"]
    assert parse_paraphrases('{"variations": ["p", "q"]}') == ["p", "q"]
    assert parse_paraphrases("Sure!\n1. one\n2. two") == ["Sure!", "one", "two"]


def test_invalid_variations_become_failures(aclient):
    "Variations are checked by the data module; an invalid one is reported with the validator's message."
    bad = {"messages": [{"role": "robot", "content": "beep"}, {"role": "user", "content": "help me"},
                        {"role": "assistant", "content": "ok"}]}
    res = run(DataAugmenter(aclient, num_variations=2, progress=False).augment_async(tickets(1) + [bad]))
    assert res.sources == [0, 0] and len(res.records) == 2 and res.report.ok
    assert [f.index for f in res.failures] == [1, 1]
    assert all(f.error.startswith("invalid variation: <augmented>:") and "messages[0].role" in f.error for f in res.failures)
