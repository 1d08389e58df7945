"Local inference: loading, prompts, batched/streamed generation, and the OpenAI-shaped local clients."
import asyncio, threading, time
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from finetune_nb.core import ConfigError, DataError, ModelLoadError
from finetune_nb.data import normalize_messages
from finetune_nb.models import load_model
from finetune_nb.infer import (build_prompt, generate_chat, stream_chat, Generation, LocalChatClient, AsyncLocalChatClient, model_lock)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONVS = [[{"role": "user", "content": "hello"}],
         [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the quick brown fox"}],
         [{"role": "user", "content": "lazy dog"}, {"role": "assistant", "content": "world"}, {"role": "user", "content": "jumps"}]]


@pytest.fixture(scope="module")
def mt(tiny_random_model): return tiny_random_model


@pytest.fixture(scope="module")
def client(mt): return LocalChatClient("tiny-random", model=mt[0], tokenizer=mt[1])


def test_build_prompt_uses_chat_template_and_drops_extra_keys(mt):
    _, tok = mt
    p = build_prompt(tok, [{"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}], "weight": 0}])
    assert p == "<s><|user|>\nhello</s><|assistant|>\n"
    assert normalize_messages([{"role": "user", "content": None, "name": "x"}]) == [{"role": "user", "content": ""}]
    with pytest.raises(DataError, match=r"messages\[0\]\.role"): normalize_messages([{"content": "x"}])


def test_no_chat_template_is_a_clear_error(mt):
    import copy
    tok = copy.deepcopy(mt[1]); tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"): build_prompt(tok, CONVS[0])


def test_batched_greedy_equals_one_by_one_with_token_counts(mt):
    model, tok = mt
    batch = generate_chat(model, tok, CONVS, max_new_tokens=10)
    alone = [generate_chat(model, tok, [c], max_new_tokens=10)[0] for c in CONVS]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert len({g.text for g in batch}) == 3                      # different prompts, different replies
    for g, c in zip(batch, CONVS):
        assert isinstance(g, Generation)
        assert g.prompt_tokens == len(tok(build_prompt(tok, c), add_special_tokens=False)["input_ids"])
        assert (g.completion_tokens, g.finish_reason) == (10, "length")   # this random model never emits EOS early
    # batch_size splits into several generate calls without changing results
    assert [g.text for g in generate_chat(model, tok, CONVS, max_new_tokens=10, batch_size=2)] == [g.text for g in batch]


def test_eos_gives_finish_reason_stop(mt):
    model, tok = mt
    first = generate_chat(model, tok, CONVS[:1], max_new_tokens=5)[0]
    first_id = tok(first.text, add_special_tokens=False)["input_ids"][0]
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, first_id]   # make the first reply token an EOS
    try: g = generate_chat(model, tok, CONVS[:1], max_new_tokens=5)[0]
    finally: model.generation_config.eos_token_id = old
    assert (g.text, g.completion_tokens, g.finish_reason) == ("", 1, "stop")


def test_stop_strings_cut_before_and_ignore_the_prompt(mt):
    model, tok = mt
    full = generate_chat(model, tok, CONVS[:1], max_new_tokens=12)[0].text
    ch = next(c for c in full[1:] if c.isalpha())
    g = generate_chat(model, tok, CONVS[:1], max_new_tokens=12, stop=["never-there", ch])[0]
    assert (g.text, g.finish_reason) == (full[:full.find(ch)], "stop") and g.completion_tokens < 12
    # the prompt ends with "\n": a stop string spanning prompt and reply must not fire
    s = "\n" + full[0]
    if s not in full:
        g = generate_chat(model, tok, CONVS[:1], max_new_tokens=12, stop=s)[0]
        assert (g.text, g.finish_reason) == (full, "length")


def test_sampling_is_seeded(mt):
    model, tok = mt
    a = generate_chat(model, tok, CONVS, max_new_tokens=8, temperature=1.0, seed=7)
    b = generate_chat(model, tok, CONVS, max_new_tokens=8, temperature=1.0, seed=7)
    c = generate_chat(model, tok, CONVS, max_new_tokens=8, temperature=1.0, seed=8)
    assert [x.text for x in a] == [x.text for x in b] != [x.text for x in c]
    with pytest.raises(ConfigError): generate_chat(model, tok, CONVS, temperature=-1)


def test_stream_matches_generate_and_holds_back_stop_prefixes(mt):
    model, tok = mt
    ref = generate_chat(model, tok, CONVS[1:2], max_new_tokens=12)[0]
    s = stream_chat(model, tok, CONVS[1], max_new_tokens=12)
    deltas = list(s)
    assert len(deltas) > 1 and "".join(deltas) == ref.text
    assert (s.finish_reason, s.completion_tokens, s.prompt_tokens) == ("length", 12, ref.prompt_tokens)
    ch = next(c for c in ref.text[1:] if c.isalpha())
    s = stream_chat(model, tok, CONVS[1], max_new_tokens=12, stop=ch + "~~never")   # a prefix is held back, then released
    assert "".join(s) == ref.text
    s = stream_chat(model, tok, CONVS[1], max_new_tokens=12, stop=ch)
    assert "".join(s) == ref.text[:ref.text.find(ch)] and s.finish_reason == "stop"


def test_stream_close_stops_generation(mt):
    model, tok = mt
    s = stream_chat(model, tok, CONVS[0], max_new_tokens=400)
    next(s); s.close()
    assert not s._thread.is_alive() and s.completion_tokens < 400


def test_adapter_changes_outputs_and_4bit_loads(tiny_random_path, tiny_random_adapter, tiny_model_path, mt):
    base = generate_chat(*mt, CONVS, max_new_tokens=8)
    m, t = load_model(tiny_random_path, adapter=tiny_random_adapter, device="cpu")
    from peft import PeftModel
    assert isinstance(m, PeftModel)
    tuned = generate_chat(m, t, CONVS, max_new_tokens=8)
    assert [g.text for g in tuned] != [g.text for g in base]
    import bitsandbytes as bnb
    # 4-bit on the embedded tiny model (bitsandbytes 0.50.2's CPU 4-bit matmul fails on layers narrower than 64, like the random toy's)
    m4, t4 = load_model(tiny_model_path, device="cpu", load_in_4bit=True)
    assert any(isinstance(x, bnb.nn.Linear4bit) for x in m4.modules())
    g4 = generate_chat(m4, t4, CONVS[:1], max_new_tokens=4, stop=None)[0]
    n_prompt = len(t4(build_prompt(t4, CONVS[0]), add_special_tokens=False)["input_ids"])
    assert g4.completion_tokens <= 4 and g4.prompt_tokens == n_prompt and (g4.completion_tokens == 4 or g4.finish_reason == "stop")


def test_load_errors_say_what_and_how(tmp_path, tiny_random_path):
    with pytest.raises(ModelLoadError, match="could not load") as e: load_model(str(tmp_path/"nope"), device="cpu")
    assert "hint" in str(e.value)
    with pytest.raises(ModelLoadError, match="adapter_config.json"): load_model(tiny_random_path, adapter=tmp_path, device="cpu")


def test_local_client_returns_openai_types(client, mt):
    ref = generate_chat(*mt, CONVS[:1], max_new_tokens=6)[0]
    r = client.chat.completions.create(model="my-alias", messages=CONVS[0], max_tokens=6, temperature=0, response_format={"type": "text"})
    assert isinstance(r, ChatCompletion) and r.model == "my-alias" and r.object == "chat.completion"
    assert (r.choices[0].message.content, r.choices[0].finish_reason, r.choices[0].message.role) == (ref.text, "length", "assistant")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (ref.prompt_tokens, 6, ref.prompt_tokens + 6)
    ChatCompletion.model_validate(r.model_dump())                      # round-trips through the SDK's schema
    r2 = client.chat.completions.create(messages=CONVS[0], max_completion_tokens=6, temperature=1.0, seed=3, n=2)
    assert len(r2.choices) == 2 and r2.usage.completion_tokens == 12 and r2.model == "tiny-random"


def test_local_client_stream_chunks(client, mt):
    ref = generate_chat(*mt, CONVS[:1], max_new_tokens=6)[0]
    chunks = list(client.chat.completions.create(messages=CONVS[0], max_tokens=6, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks) and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    with pytest.raises(ConfigError): client.chat.completions.create(messages=CONVS[0], stream=True, n=2)


def test_threads_share_one_model_safely(client, mt):
    ref = [g.text for g in generate_chat(*mt, CONVS, max_new_tokens=8)]
    other = LocalChatClient("again", model=mt[0], tokenizer=mt[1])
    assert other.lock is client.lock is model_lock(mt[0])
    out = {}
    def work(i, c): out[i] = c.chat.completions.create(messages=CONVS[i % 3], max_tokens=8, temperature=0).choices[0].message.content
    ts = [threading.Thread(target=work, args=(i, client if i % 2 else other)) for i in range(6)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert [out[i] for i in range(6)] == ref * 2


def test_async_client_does_not_block_the_loop(client, mt):
    ref = [g.text for g in generate_chat(*mt, CONVS, max_new_tokens=24)]
    ac = AsyncLocalChatClient(client=client)
    async def main():
        ticks, done = [], asyncio.Event()
        async def ticker():
            while not done.is_set(): ticks.append(time.monotonic()); await asyncio.sleep(0.002)
        t = asyncio.create_task(ticker())
        rs = await asyncio.gather(*[ac.chat.completions.create(model="m", messages=c, max_tokens=24, temperature=0) for c in CONVS * 2])
        done.set(); await t
        chunks = [c async for c in await ac.chat.completions.create(messages=CONVS[2], max_tokens=24, temperature=0, stream=True)]
        return rs, ticks, chunks
    rs, ticks, chunks = asyncio.run(main())
    assert [r.choices[0].message.content for r in rs] == ref * 2
    assert len(ticks) >= 5            # the loop kept ticking while six generations ran in worker threads
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref[2]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_embedded_tiny_model_by_name():
    "The embedded model loads by name through finetune_nb.tiny.resolve_model_path and answers through the local client."
    tiny = pytest.importorskip("finetune_nb.tiny")
    c = LocalChatClient(tiny.TINY_MODEL, device="cpu")
    msgs = [{"role": "system", "content": "Reply with JSON only."}, {"role": "user", "content": "I was charged twice."}]
    r = c.chat.completions.create(model=tiny.TINY_MODEL, messages=msgs, max_tokens=12, temperature=0)
    assert r.model == tiny.TINY_MODEL and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(c.tokenizer(build_prompt(c.tokenizer, msgs), add_special_tokens=False)["input_ids"])
    assert c.tokenizer.pad_token_id not in (c.tokenizer.eos_token_id, None)
    assert r.choices[0].message.content == generate_chat(c.model, c.tokenizer, [msgs], max_new_tokens=12)[0].text

def test_full_finetune_dir_in_place_of_adapter(tiny_random_path):
    "LocalFineTuner(method='full') writes a whole model; passing it where an adapter goes loads that model."
    import torch
    from finetune_nb.models import load_model
    m1, _ = load_model("finetune-nb/not-a-base", adapter=tiny_random_path, device="cpu")
    m2, _ = load_model(tiny_random_path, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_concurrent_model_loads_are_safe(tiny_model_path, tmp_path):
    "The server loads models in worker threads; transformers patches process-wide state while it builds one (see core.MODEL_LOCK)."
    import threading
    from finetune_nb.lora import LocalFineTuner, LoRAConfig, TrainingConfig
    adapter = LocalFineTuner(tiny_model_path, LoRAConfig(), TrainingConfig(progress=False)).load().save_adapter(tmp_path/"adapter")
    errors, done = [], []
    def serve_side():
        for _ in range(6):
            try:
                m, _ = load_model(tiny_model_path, adapter=adapter, device="cpu")
                assert not any(t.is_meta for t in [*m.parameters(), *m.buffers()]), "a tensor left on the meta device"
                done.append(1)
            except Exception as e: errors.append(repr(e)[:300])
    def trainer_side():
        for _ in range(6):
            try:
                ft = LocalFineTuner(tiny_model_path, LoRAConfig(), TrainingConfig(progress=False)).load()
                assert all(p.abs().sum() > 0 for n, p in ft.model.named_parameters() if "lora_A" in n), "adapter left uninitialised"
                done.append(1)
            except Exception as e: errors.append(repr(e)[:300])
    ts = [threading.Thread(target=f) for f in (serve_side, trainer_side, serve_side)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert not errors, errors[:3]
    assert len(done) == 18
