"The embedded tiny model: tokenizer, chat template, build (deterministic, cached, locked), resolve_model_path."
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
from finetune_nb.tiny import (TINY_MODEL, TINY_MODELS, TinySpec, TINY_CHAT_TEMPLATE, build_tiny, ensure_tiny,
                              resolve_model_path, tiny_model_dir, tiny_fingerprint, train_tiny_tokenizer, weights_hash)

SMALL = TinySpec(vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, n_docs=200,
                 block_size=32, pretrain_steps=3, batch_size=4)
CONV = [{"role": "system", "content": "Sys."}, {"role": "user", "content": "Where is my parcel?"},
        {"role": "assistant", "content": '{"category": "shipping"}'}, {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "OK"}]


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_special_tokens_distinct(tok):
    ids = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id]
    assert len(set(ids)) == 3 and None not in ids
    assert [tok.pad_token, tok.bos_token, tok.eos_token] == ["<|pad|>", "<|bos|>", "<|eos|>"]
    for t in ["<|system|>", "<|user|>", "<|assistant|>", "<|eos|>"]:   # each role marker is one token
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert tok("hello", add_special_tokens=True)["input_ids"][0] != tok.bos_token_id   # BOS comes from the template only


def test_chat_template_renders_exactly(tok):
    assert tok.chat_template == TINY_CHAT_TEMPLATE
    text = tok.apply_chat_template(CONV, tokenize=False)
    assert text == ('<|bos|><|system|>\nSys.\n<|user|>\nWhere is my parcel?\n<|assistant|>\n{"category": "shipping"}<|eos|>\n'
                    '<|user|>\nThanks\n<|assistant|>\nOK<|eos|>\n')
    prompt = tok.apply_chat_template(CONV[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWhere is my parcel?\n<|assistant|>\n") and text.startswith(prompt)
    # the tokenized prompt is a prefix of the tokenized conversation: training and inference agree
    full, p = tok.apply_chat_template(CONV, return_dict=True)["input_ids"], tok.apply_chat_template(CONV[:2], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert full[:len(p)] == p
    with pytest.raises(Exception, match="unsupported role"): tok.apply_chat_template([{"role": "critic", "content": "x"}], tokenize=False)   # "tool" is a role since issue 15


def test_generation_markers_mask_assistant_and_eos(tok):
    assert "{% generation %}" in tok.chat_template and "{% endgeneration %}" in tok.chat_template
    enc = tok.apply_chat_template(CONV, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m: cur.append(i)
        elif cur: runs.append(cur); cur = []
    if cur: runs.append(cur)
    assert [tok.decode(r) for r in runs] == ['{"category": "shipping"}<|eos|>', "OK<|eos|>"]


def test_tiny_model_loads_and_is_a_base_model(tiny_model_path, tok):
    import torch
    from transformers import AutoModelForCausalLM
    p = Path(tiny_model_path)
    assert p == tiny_model_dir(TINY_MODEL) and p.parent == Path(os.environ["FINETUNE_NB_DATA_DIR"]).resolve()/"models"
    assert (p/"model.safetensors").exists() and not list(p.glob("*.bin"))
    info = json.loads((p/"finetune_nb_tiny.json").read_text())
    assert info["fingerprint"] == tiny_fingerprint(TINY_MODELS[TINY_MODEL])
    losses = [h["loss"] for h in info["pretrain_loss"]]
    assert losses[-1] < losses[0] - 2        # pretraining really happened
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, trust_remote_code=False)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    # it has learned the domain: domain text is far more likely than shuffled words
    text = "Hi, my package from order #12345 has not arrived. Please fix this today. Thanks so much for your help!"
    words = text.split(); shuffled = " ".join(words[1::2] + words[0::2])
    def nll(t):
        ids = torch.tensor([[tok.bos_token_id] + tok(t)["input_ids"]])
        with torch.no_grad(): return model(input_ids=ids, labels=ids).loss.item()
    assert nll(text) < nll(shuffled) - 1.0


def test_resolve_model_path_passthrough():
    for name in ["Qwen/Qwen2.5-0.5B-Instruct", "/models/merged", "./tiny", "finetune-nb/tiny-unknown", "my-tiny-model"]:
        assert resolve_model_path(name) == name
    assert resolve_model_path(Path("/x/y")) == "/x/y"


def test_build_is_deterministic(tmp_path):
    a, b, c = build_tiny(tmp_path/"a", SMALL, progress=False), build_tiny(tmp_path/"b", SMALL, progress=False), \
              build_tiny(tmp_path/"c", TinySpec(**{**SMALL.__dict__, "seed": 1}), progress=False)
    assert weights_hash(tmp_path/"a") == weights_hash(tmp_path/"b") != weights_hash(tmp_path/"c")
    assert (tmp_path/"a"/"tokenizer.json").read_text() == (tmp_path/"b"/"tokenizer.json").read_text()
    assert a["pretrain_loss"] == b["pretrain_loss"] and len(a["pretrain_loss"]) == 3
    assert tiny_fingerprint(SMALL) != tiny_fingerprint(TinySpec(**{**SMALL.__dict__, "seed": 1}))


def test_tiny_random_variant():
    spec = TINY_MODELS["finetune-nb/tiny-random"]
    assert spec.pretrain_steps == 0 and tiny_model_dir("finetune-nb/tiny-random") != tiny_model_dir(TINY_MODEL)


_TEST_SPEC = dict(vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, n_docs=200,
                  block_size=32, pretrain_steps=3, batch_size=4)
_BUILDER = textwrap.dedent(f"""
    import sys, finetune_nb.tiny as t
    t.TINY_MODELS["finetune-nb/tiny-test"] = t.TinySpec(**{_TEST_SPEC!r})
    real = t.build_tiny
    def counted(*a, **k):
        open(sys.argv[1], "a").write("built\\n"); return real(*a, **k)
    t.build_tiny = counted
    print(t.resolve_model_path("finetune-nb/tiny-test"))
""")


def test_cache_is_built_once_under_a_lock(tmp_path, monkeypatch):
    import finetune_nb.tiny as t
    env = {**os.environ, "FINETUNE_NB_DATA_DIR": str(tmp_path/"data")}
    count = tmp_path/"builds.txt"
    # two processes ask for the same model at once: one builds, the other waits and reuses it
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(count)], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and Path(outs[0]).is_dir()
    assert count.read_text().splitlines() == ["built"]
    d = Path(outs[0])
    assert not [x for x in d.parent.iterdir() if ".build-" in x.name]   # no temp dirs left
    # in this process: the cached build is reused without building ...
    monkeypatch.setenv("FINETUNE_NB_DATA_DIR", str(tmp_path/"data"))
    monkeypatch.setitem(t.TINY_MODELS, "finetune-nb/tiny-test", TinySpec(**_TEST_SPEC))
    calls = []
    monkeypatch.setattr(t, "build_tiny", lambda *a, **k: calls.append(a) or build_tiny(*a, **k))
    assert resolve_model_path("finetune-nb/tiny-test") == str(d) and calls == []
    # ... and an incomplete directory (a crash mid-build, by an older version) is rebuilt, not trusted
    (d/"model.safetensors").unlink()
    assert ensure_tiny("finetune-nb/tiny-test", progress=False) == d and len(calls) == 1
    assert (d/"model.safetensors").exists()
