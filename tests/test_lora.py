"Local trainer: label masks, EOS, padding-free batches, stop + resume, QLoRA on CPU, merge, multi-process (real models, toy sizes)."
import json, os, subprocess, sys, threading
from pathlib import Path

import pytest
import torch

from finetune_nb.core import ConfigError, DataError, TrainingError
from finetune_nb.lora import (ChatCollator, LocalFineTuner, LoRAConfig, TrainingConfig,
                              tokenize_conversation, tokenize_dataset)
from finetune_nb.models import ensure_pad_token

ROOT = Path(__file__).resolve().parent.parent
CONVO = [{"role": "system", "content": "be brief"},
         {"role": "user", "content": "classify: the red cat"}, {"role": "assistant", "content": '{"label": "animal"}'},
         {"role": "user", "content": "and the blue car?"}, {"role": "assistant", "content": '{"label": "vehicle"}'}]

@pytest.fixture(autouse=True)
def _one_torch_thread():
    "Toy models run fastest on one thread; several threads on a busy 2-core machine spin (measured 12x slower)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def _tok(d):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(d)

def _trained_text(tok, f)->str:
    return tok.decode([t for t, l in zip(f["input_ids"], f["labels"]) if l != -100])

def _cfg(**kw)->TrainingConfig:
    base = dict(batch_size=8, grad_accum=1, lr=1e-2, logging_steps=1, progress=False, save_steps=None)
    return TrainingConfig(**{**base, **kw})

def _logits(model, tok, text="<|bos|><|user|>\nclassify: the red cat\n<|assistant|>\n"):
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad(): return model(**enc).logits

# --- formatting ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["markers", "plain"])
def test_label_mask_is_exactly_assistant_tokens_plus_eos(which, toy_model_dir, toy_model_plain_dir):
    tok = _tok(toy_model_dir if which == "markers" else toy_model_plain_dir)
    f = tokenize_conversation(tok, CONVO, max_length=512)
    assert f["input_ids"] == tok.apply_chat_template([{k: m[k] for k in ("role", "content")} for m in CONVO], tokenize=True, return_dict=True)["input_ids"]
    eos = tok.eos_token_id
    # rebuild the expected mask independently: the tokens of each answer + the EOS right after it
    expected = [-100] * len(f["input_ids"])
    for ans in ('{"label": "animal"}', '{"label": "vehicle"}'):
        a = tok(ans, add_special_tokens=False)["input_ids"] + [eos]
        ids = f["input_ids"]
        i = next(i for i in range(len(ids)) if ids[i:i+len(a)] == a)
        expected[i:i+len(a)] = a
    assert f["labels"] == expected
    assert _trained_text(tok, f) == '{"label": "animal"}<|eos|>{"label": "vehicle"}<|eos|>'
    assert f["attention_mask"] == [1] * len(f["input_ids"])

def test_weight_zero_turn_is_context_only(toy_model_dir):
    tok = _tok(toy_model_dir)
    msgs = [dict(m) for m in CONVO]; msgs[2]["weight"] = 0; msgs[4]["weight"] = 1
    f = tokenize_conversation(tok, msgs)
    assert _trained_text(tok, f) == '{"label": "vehicle"}<|eos|>'
    assert f["input_ids"] == tokenize_conversation(tok, CONVO)["input_ids"]   # still in the context

def test_data_objects_accepted(toy_model_dir):
    from finetune_nb.data import Conversation
    tok = _tok(toy_model_dir)
    assert tokenize_conversation(tok, Conversation.from_dict({"messages": CONVO})) == tokenize_conversation(tok, CONVO)

def test_truncated_and_untrainable_examples_reported(toy_model_dir, caplog):
    tok = _tok(toy_model_dir)
    long = [{"role": "user", "content": "classify: " + "the red cat " * 40}, CONVO[2]]
    w0 = [CONVO[1], {**CONVO[2], "weight": 0}]
    ds, rep = tokenize_dataset(tok, [{"messages": CONVO}, {"messages": long}, {"messages": w0}], max_length=64)
    assert (len(ds), rep["kept"], rep["truncated"], rep["no_target"]) == (1, 1, [1], [2])
    assert "max_length=64" in caplog.text
    with pytest.raises(DataError, match="trainable"): tokenize_dataset(tok, [{"messages": w0}])

def test_batch_without_trainable_token_is_an_error():
    f = {"input_ids": [1, 5, 6], "attention_mask": [1, 1, 1], "labels": [-100, -100, -100]}
    for pf in (False, True):
        with pytest.raises(TrainingError, match="no trainable token"): ChatCollator(0, padding_free=pf)([f, f])

def test_pad_token_distinct_from_eos(toy_model_dir):
    from transformers import AutoModelForCausalLM
    tok, model = _tok(toy_model_dir), AutoModelForCausalLM.from_pretrained(toy_model_dir)
    assert ensure_pad_token(tok, model) is False and tok.pad_token == "<|pad|>"   # already fine: untouched
    tok.pad_token = tok.eos_token                                                  # the classic mistake
    assert ensure_pad_token(tok, model) is False and tok.pad_token == "<|pad|>"    # the existing pad token is reused
    # a tokenizer with no pad token at all gets a new one, and the model's embeddings grow to match
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, LlamaConfig, LlamaForCausalLM
    tk = Tokenizer(models.BPE()); tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(["hello world"], trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bare = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>"); n = len(bare)
    m2 = LlamaForCausalLM(LlamaConfig(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    assert ensure_pad_token(bare, m2) is True
    assert bare.pad_token_id not in (None, bare.eos_token_id) and len(bare) == n + 1
    assert m2.get_input_embeddings().weight.shape[0] == n + 1 and m2.config.pad_token_id == bare.pad_token_id
    # the EOS label survives padding
    f = tokenize_conversation(tok, CONVO)
    b = ChatCollator(tok.pad_token_id)([f, tokenize_conversation(tok, CONVO[:3])])
    assert (b["labels"] == tok.eos_token_id).sum().item() == 3

def test_fp16_on_cpu_is_a_clear_config_error(toy_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        LocalFineTuner(toy_model_dir, training_config=TrainingConfig(precision="fp16"))
    assert "CPU" in str(e.value) and "fp32" in str(e.value)
    assert TrainingConfig(precision="bf16").resolve_precision("cpu") == "bf16"
    with pytest.raises(ConfigError, match="method"): TrainingConfig(method="full", load_in_4bit=True)

def test_config_defaults_are_the_familiar_ones():
    lc, tc = LoRAConfig(), TrainingConfig()
    assert (lc.r, lc.alpha, lc.dropout, list(lc.target_modules), lc.use_dora) == (8, 16, 0.05, ["q_proj", "v_proj"], False)
    assert (tc.method, tc.epochs, tc.batch_size, tc.lr, tc.max_length, tc.grad_accum) == ("lora", 3, 4, 2e-4, 512, 4)
    assert 0 < tc.warmup < 1 and not tc.packing and not tc.gradient_checkpointing and not tc.load_in_4bit
    assert (tc.bnb_4bit_quant_type, tc.bnb_4bit_use_double_quant) == ("nf4", True)
    p = LoRAConfig(r=4, alpha=32, dropout=0.1, target_modules="all-linear", use_dora=True).to_peft()
    assert (p.r, p.lora_alpha, p.lora_dropout, p.target_modules, p.use_dora) == (4, 32, 0.1, "all-linear", True)

@pytest.mark.parametrize("kw", [dict(bnb_4bit_compute_dtype="bf16"), dict(bnb_4bit_quant_type="int4"), dict(max_steps=0),
                                dict(epochs=0), dict(warmup=-1), dict(eval_steps=0), dict(save_steps=0)])
def test_bad_config_is_a_clear_error(kw):
    with pytest.raises(ConfigError, match=f"TrainingConfig.{next(iter(kw))}=") as e: TrainingConfig(**kw)
    assert "hint:" in str(e.value)

def test_fp16_compute_dtype_on_cpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="float16.*CPU"):
        TrainingConfig(method="qlora", bnb_4bit_compute_dtype="float16").resolve_precision("cpu")

@pytest.mark.parametrize("native,expect", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_a_gpu(monkeypatch, native, expect):
    "Ampere and newer compute bf16 natively; older GPUs (T4, V100) only emulate it, so auto picks fp16 there."
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    tc = TrainingConfig(method="qlora")
    assert tc.resolve_precision("cuda") == expect
    assert tc.compute_dtype("cuda") == {"bf16": torch.bfloat16, "fp16": torch.float16}[expect]
    assert tc.resolve_precision("cpu") == "fp32" and tc.compute_dtype("cpu") == torch.float32
    if not native:
        with pytest.raises(ConfigError, match="bf16"): TrainingConfig(precision="bf16").resolve_precision("cuda")

def test_trainable_weights_stay_fp32_on_a_half_precision_base(toy_model_dir):
    "peft upcasts adapters but not `modules_to_save` copies; fp16 AMP cannot unscale fp16 gradients, bf16 AdamW loses updates."
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from finetune_nb.lora import _trainable_in_fp32
    m = AutoModelForCausalLM.from_pretrained(toy_model_dir, dtype=torch.bfloat16)
    m = get_peft_model(m, LoRAConfig(modules_to_save=["lm_head"]).to_peft())
    assert any(p.requires_grad and p.dtype == torch.bfloat16 for p in m.parameters())
    assert _trainable_in_fp32(m) > 0
    assert all(p.dtype == torch.float32 for p in m.parameters() if p.requires_grad)
    assert any(p.dtype == torch.bfloat16 for p in m.parameters() if not p.requires_grad)   # the frozen base is left alone

def test_final_step_is_logged(toy_model_dir, toy_task, tmp_path):
    "final_loss is the loss of the last steps, even when the step count is not a multiple of logging_steps."
    res = LocalFineTuner(toy_model_dir, training_config=_cfg(max_steps=7, logging_steps=5), output_dir=tmp_path).train(toy_task[0])
    assert [h["step"] for h in res.loss_history if "loss" in h] == [5, 7]
    assert res.final_loss == res.loss_history[-1]["loss"]

def test_collator_rounds_padding_up(toy_model_dir):
    "On a GPU batches are padded to a multiple of 8 (tensor-core shapes); the extra positions are masked and untrained."
    tok = _tok(toy_model_dir)
    fs = [tokenize_conversation(tok, CONVO[:3]), tokenize_conversation(tok, CONVO)]
    n = max(len(f["input_ids"]) for f in fs)
    b = ChatCollator(tok.pad_token_id, pad_to_multiple_of=8)(fs)
    assert b["input_ids"].shape == (2, -(-n // 8) * 8) and b["input_ids"].shape[1] > n
    assert (b["labels"][:, n:] == -100).all() and (b["attention_mask"][:, n:] == 0).all() and (b["input_ids"][:, n:] == tok.pad_token_id).all()

def test_padding_free_matches_padded_loss(toy_model_dir, toy_task):
    from transformers import AutoModelForCausalLM
    tok = _tok(toy_model_dir)
    model = AutoModelForCausalLM.from_pretrained(toy_model_dir); model.config.use_cache = False
    feats = [tokenize_conversation(tok, r) for r in toy_task[0][:6]] + [tokenize_conversation(tok, CONVO)]
    padded, flat = ChatCollator(tok.pad_token_id)(feats), ChatCollator(tok.pad_token_id, padding_free=True)(feats)
    assert flat["input_ids"].shape[0] == 1 and (flat["input_ids"] != tok.pad_token_id).all()
    assert (padded["input_ids"] == tok.pad_token_id).any()
    with torch.no_grad():
        assert model(**padded).loss.item() == pytest.approx(model(**flat).loss.item(), abs=1e-5)

# --- training --------------------------------------------------------------------------------------------------

def test_full_finetune_learns_to_stop(toy_model_dir, toy_task, tmp_path):
    train, test = toy_task
    seen = []
    ft = LocalFineTuner(toy_model_dir, training_config=_cfg(method="full", epochs=14, lr=3e-3, packing=True, logging_steps=5),
                        output_dir=tmp_path)
    res = ft.train(train, eval_data=test, callbacks=[seen.append])
    assert res.method == "full" and res.steps == 14 * 7 and res.eval_loss is not None and res.eval_loss < 1.0
    assert seen == [h for h in res.loss_history]
    assert {"step", "epoch", "loss", "learning_rate"} <= set(res.loss_history[0])
    assert res.train_tokens == res.data_report["tokens"] * 14
    assert Path(res.adapter_dir, "model.safetensors").exists()
    gens = ft.generate([r["messages"][:-1] for r in test], max_new_tokens=40)
    for g in gens:   # EOS well before max_new_tokens on every held-out prompt
        assert g.finish_reason == "stop" and g.completion_tokens < 20, g
        assert set(json.loads(g.text)) == {"label"}
    assert "".join(ft.stream(test[0]["messages"][:-1], max_new_tokens=40)) == gens[0].text

def test_stop_event_then_resume_matches_uninterrupted(toy_model_dir, toy_task, tmp_path):
    train = toy_task[0]
    cfg = dict(max_steps=8, lr=5e-3, logging_steps=1)
    full = LocalFineTuner(toy_model_dir, LoRAConfig(target_modules="all-linear"), _cfg(**cfg), output_dir=tmp_path/"a").train(train)
    assert full.steps == 8 and not full.stopped

    stop = threading.Event()
    stop_at_3 = lambda rec: rec["step"] >= 3 and stop.set()
    first = LocalFineTuner(toy_model_dir, LoRAConfig(target_modules="all-linear"), _cfg(**cfg), output_dir=tmp_path/"b")
    part = first.train(train, callbacks=[stop_at_3], stop_event=stop)
    assert part.stopped and part.steps < 8 and part.checkpoint and Path(part.checkpoint, "optimizer.pt").exists()
    assert Path(part.checkpoint, "adapter_model.safetensors").exists() and Path(part.checkpoint, "scheduler.pt").exists()
    # the live progress file (what `finetune-nb run`'s heartbeat reads) ends with the run's state, its last step and loss
    live = lambda d: json.loads((tmp_path/d/"progress.json").read_text())
    assert live("a")["status"] == "done" and (live("a")["step"], live("a")["max_steps"]) == (8, 8)
    assert live("a")["loss"] == pytest.approx(full.final_loss) and live("b")["status"] == "stopped" and live("b")["step"] == part.steps

    again = LocalFineTuner(toy_model_dir, LoRAConfig(target_modules="all-linear"), _cfg(**cfg), output_dir=tmp_path/"b")
    res = again.train(train, resume_from_checkpoint=True)
    assert res.steps == 8 and not res.stopped
    assert res.final_loss == pytest.approx(full.final_loss, rel=1e-4)
    tail = lambda r: [round(h["loss"], 4) for h in r.loss_history if "loss" in h and h["step"] > part.steps]
    assert tail(res) == tail(full)
    assert full.final_loss < full.loss_history[0]["loss"]

def test_qlora_on_cpu(toy_task, tmp_path):
    import bitsandbytes as bnb
    from fixtures_lora import build_toy_model
    # bitsandbytes 0.50.2's CPU 4-bit matmul fails on layers narrower than its 64-wide quantization block, so this
    # toy is 64 wide (real models, and finetune-nb/tiny at 192, are wider)
    toy_model_dir = build_toy_model(tmp_path/"toy64", hidden=64)
    train = toy_task[0]
    lc = LoRAConfig(r=8, target_modules="all-linear")
    ft = LocalFineTuner(toy_model_dir, lc, _cfg(method="qlora", max_steps=15), output_dir=tmp_path)
    res = ft.train(train)
    assert res.method == "qlora" and any(isinstance(m, bnb.nn.Linear4bit) for m in ft.model.modules())
    qc = ft.model.config.quantization_config
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    assert (qc["bnb_4bit_quant_type"], qc["bnb_4bit_use_double_quant"], qc["bnb_4bit_compute_dtype"]) == ("nf4", True, "float32")
    losses = [h["loss"] for h in res.loss_history]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    assert Path(res.adapter_dir, "adapter_model.safetensors").exists()
    before = _logits(ft.model, ft.tokenizer)
    again = LocalFineTuner(toy_model_dir, lc, _cfg(method="qlora")).load_adapter(res.adapter_dir)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in again.model.modules())
    assert torch.equal(_logits(again.model, again.tokenizer), before)
    q = [[{"role": "user", "content": "classify: the red cat"}]]
    assert again.generate(q, max_new_tokens=8)[0].text == ft.generate(q, max_new_tokens=8)[0].text
    # merging a QLoRA adapter writes a plain full-precision model (no peft, no 4-bit layers)
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(ft.merge_and_save(tmp_path/"merged"))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules()) and not hasattr(merged, "peft_config")
    assert merged.dtype == torch.float32

def test_merge_equals_base_plus_adapter(toy_model_dir, toy_task, tmp_path):
    from transformers import AutoModelForCausalLM
    ft = LocalFineTuner(toy_model_dir, LoRAConfig(target_modules="all-linear"), _cfg(max_steps=5), output_dir=tmp_path/"run")
    ft.train(toy_task[0])
    d = ft.merge_and_save(tmp_path/"merged")
    assert not (d/"adapter_config.json").exists() and (d/"model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(d)
    assert not hasattr(merged, "peft_config") and merged.config.pad_token_id == ft.tokenizer.pad_token_id
    with_adapter, base = _logits(ft.model, ft.tokenizer), _logits(AutoModelForCausalLM.from_pretrained(toy_model_dir), ft.tokenizer)
    assert not torch.allclose(with_adapter, base, atol=1e-3)          # the adapter does something
    assert torch.allclose(_logits(merged, ft.tokenizer), with_adapter, atol=1e-5)

def test_gradient_checkpointing_dora_and_length_grouping(toy_model_dir, toy_task, tmp_path):
    ft = LocalFineTuner(toy_model_dir, LoRAConfig(use_dora=True), _cfg(max_steps=3, gradient_checkpointing=True, group_by_length=True),
                        output_dir=tmp_path)
    res = ft.train(toy_task[0])
    assert res.steps == 3 and all(h["loss"] == h["loss"] for h in res.loss_history)   # finite, not NaN
    assert ft.trainer.args.activation_checkpointing and ft.model.base_model.model.is_activation_checkpointing
    assert any("lora_magnitude_vector" in n for n, _ in ft.model.named_parameters())  # DoRA
    from transformers.trainer_pt_utils import LengthGroupedSampler
    assert isinstance(ft.trainer._get_train_sampler(), LengthGroupedSampler)         # batches of similar length

def test_bf16_on_cpu_trains(toy_model_dir, toy_task, tmp_path):
    ft = LocalFineTuner(toy_model_dir, LoRAConfig(), _cfg(max_steps=2, precision="bf16"), output_dir=tmp_path)
    res = ft.train(toy_task[0])
    assert ft.trainer.args.bf16 and res.steps == 2 and 0 < res.final_loss < 20

def test_accelerate_launch_two_cpu_processes(toy_model_dir, tmp_path):
    script = tmp_path/"train_ddp.py"
    script.write_text(f"""
import json, os, sys
sys.path.insert(0, {str(ROOT/'tests')!r})
import torch.distributed as dist
from fixtures_lora import toy_split
from finetune_nb.lora import LocalFineTuner, LoRAConfig, TrainingConfig
ft = LocalFineTuner({toy_model_dir!r}, LoRAConfig(target_modules="all-linear"),
                    TrainingConfig(epochs=1, batch_size=4, grad_accum=1, lr=1e-2, logging_steps=1, progress=False, save_steps=None),
                    output_dir={str(tmp_path/'out')!r})
res = ft.train(toy_split()[0])
from finetune_nb.lora import _clean_exit_when_distributed
assert dist.is_initialized() and _clean_exit_when_distributed.done  # the process group is torn down at exit
info = dict(rank=dist.get_rank(), world=dist.get_world_size(), backend=dist.get_backend(), steps=res.steps,
            loss=res.final_loss, tokens=res.train_tokens)
json.dump(info, open(os.path.join({str(tmp_path)!r}, f"rank{{info['rank']}}.json"), "w"))
""")
    # accelerate's --cpu launcher needs mpirun for several processes; its torchrun launcher (--multi_gpu) with no visible GPU
    # starts 2 CPU processes, and the Trainer (use_cpu) joins them with gloo
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(script)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    infos = [json.loads((tmp_path/f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in infos] == [2, 2] and infos[0]["backend"] == "gloo"
    # the 56 examples are sharded: 28 a process, 7 steps of 4 (one process alone would take 14)
    assert infos[0]["steps"] == infos[1]["steps"] == 7 and infos[0]["loss"] == pytest.approx(infos[1]["loss"])
    assert Path(tmp_path/"out"/"adapter"/"adapter_model.safetensors").exists()

def test_gpu_qlora_bench_runs_tiny_on_cpu():
    p = subprocess.run([sys.executable, str(ROOT/"bench"/"gpu_qlora.py"), "--tiny"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    last = dict(kv.split("=") for kv in p.stdout.strip().splitlines()[-1].split())
    assert {"tok_s", "peak_mem_gb", "mfu", "params_m", "device"} <= set(last)
    assert float(last["tok_s"]) > 0 and last["device"] == "cpu"

def test_train_throughput_bench_runs_small(tiny_model_path):
    "The three recipes run on the tiny model and the last line keeps its contract (the ratios are timings: not asserted)."
    p = subprocess.run([sys.executable, str(ROOT/"bench"/"train_throughput.py"), "--n-train", "16", "--n-test", "4", "--model", tiny_model_path],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    last = dict(kv.split("=") for kv in lines[-1].split())
    assert set(last) == {"tok_s", "ratio_vs_seed", "ratio_vs_trl", "padding_waste"} and float(last["padding_waste"]) == 0.0
    assert float(last["tok_s"]) > 0 and float(last["ratio_vs_seed"]) > 0 and float(last["ratio_vs_trl"]) > 0
    assert any(l.startswith("naive") and "%" in l for l in lines) and any(l.startswith("TRL SFTTrainer") for l in lines)
    assert lines[-2].startswith("eval loss ours ")

# --- the real tiny model (when finetune_nb.tiny is there) -------------------------------------------------------

@pytest.mark.slow
def test_tiny_model_demo_finetune_stops(tmp_path):
    pytest.importorskip("finetune_nb.tiny")
    from finetune_nb.demo import make_demo_data
    train, test = make_demo_data(n_train=400, n_test=16, seed=0)
    ft = LocalFineTuner("finetune-nb/tiny", training_config=TrainingConfig(method="full", epochs=1, batch_size=16, grad_accum=1,
                        lr=1e-3, progress=False, packing=True), output_dir=tmp_path)
    ft.train(train)
    gens = ft.generate([r["messages"][:-1] for r in test], max_new_tokens=64)
    assert all(g.finish_reason == "stop" and g.completion_tokens < 64 for g in gens)
