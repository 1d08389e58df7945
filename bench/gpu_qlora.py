"""QLoRA throughput, peak memory and MFU of `finetune_nb.lora.LocalFineTuner` on a randomly initialised Llama.

On a GPU it builds a ~0.5B-parameter Llama (hidden 1536, 16 layers, GQA, vocab 32k), stores it in bf16 safetensors and
trains LoRA (all linear layers, r=16) on the 4-bit NF4 base for a few dozen steps. With `--tiny`, or when there is no
GPU, it runs the same code on a tiny config (a smoke test; the CPU figures mean little).

MFU counts the model FLOPs QLoRA really needs per trained token: 4·N_frozen (forward + activation gradients through the
frozen base; no weight gradients) + 6·N_lora + 12·L·H·T for attention (N without the input embedding, which is a lookup;
L layers, H hidden, T sequence), over the peak dense bf16 FLOP/s of the GPU (table below, SXM figures unless the name says
PCIe/NVL; measured with a large matmul for unknown devices and on CPU). Examples all have the same length, so batches are
plainly padded (`packing=False`): there is nothing to pad, and SDPA on packed rows would pay quadratic attention.

    python bench/gpu_qlora.py            # GPU: ~0.5B model
    python bench/gpu_qlora.py --tiny     # any machine, seconds

Last line: `tok_s=N peak_mem_gb=X mfu=F params_m=P device=D`.
"""
import argparse, json, random, resource, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12, "RTX 4090": 165e12}

def build_model(d:Path, cfg:dict, device:str)->int:
    "Write a tokenizer (byte-level BPE with chat template) and a random-init Llama; returns its parameter count."
    import torch
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast, LlamaConfig, LlamaForCausalLM
    tk = Tokenizer(models.BPE()); tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([" ".join(WORDS)] * 4, trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                           special_tokens=["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' %}"
                         "{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}\n"
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    tok.save_pretrained(d)
    lc = LlamaConfig(vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["inter"], num_hidden_layers=cfg["layers"],
                     num_attention_heads=cfg["heads"], num_key_value_heads=cfg["kv"], max_position_embeddings=4096,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if device == "cuda" else "cpu"):
        m = LlamaForCausalLM(lc).to(torch.bfloat16 if device == "cuda" else torch.float32)
    n = sum(p.numel() for p in m.parameters())
    m.save_pretrained(d); del m
    if device == "cuda": torch.cuda.empty_cache()
    return n

WORDS = ("invoice refund charge card login password reset account shipping parcel delivery late broken screen crash error "
         "update feature request thanks great slow app order tracking address billing subscription cancel upgrade").split()

def make_records(n:int, words:int, seed:int=0)->list[dict]:
    "Chat records of roughly fixed length (random words), half prompt and half answer."
    r = random.Random(seed)
    w = lambda k: " ".join(r.choice(WORDS) for _ in range(k))
    return [{"messages": [{"role": "user", "content": w(words // 2)}, {"role": "assistant", "content": w(words // 2)}]} for _ in range(n)]

def peak_flops(device:str)->tuple[float, str]:
    "Peak dense FLOP/s: the spec for known GPUs, else measured with a large matmul."
    import torch
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for k, v in PEAK_BF16.items():
            if k in name: return v, f"spec bf16 {name}"
        dt, n = torch.bfloat16, 8192
    else: dt, n = torch.float32, 1024
    a = torch.randn(n, n, device=device, dtype=dt); b = torch.randn(n, n, device=device, dtype=dt)
    for _ in range(2): a @ b
    if device == "cuda": torch.cuda.synchronize()
    t, k = time.perf_counter(), 10
    for _ in range(k): a @ b
    if device == "cuda": torch.cuda.synchronize()
    return 2 * n**3 * k / (time.perf_counter() - t), f"measured {dt} matmul"

def main(argv=None):
    import torch
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config (default on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps")
    ap.add_argument("--batch", type=int, default=None, help="examples per step")
    ap.add_argument("--seq", type=int, default=None, help="tokens per example (approx.)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = a.tiny or device == "cpu"
    cfg = (dict(vocab=1024, hidden=64, inter=128, layers=2, heads=4, kv=2) if tiny else
           dict(vocab=32000, hidden=1536, inter=4096, layers=16, heads=12, kv=4))
    steps, batch, seq = a.steps or (4 if tiny else 40), a.batch or (4 if tiny else 8), a.seq or (64 if tiny else 1024)
    if device == "cpu": torch.set_num_threads(1 if tiny else min(torch.get_num_threads(), 2))
    from finetune_nb.lora import LocalFineTuner, LoRAConfig, TrainingConfig
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)/"model"
        n_params = build_model(d, cfg, device)
        recs = make_records(steps * batch, words=max(8, seq - 8))      # ~1 token per word with this tokenizer
        ft = LocalFineTuner(str(d), LoRAConfig(r=16, alpha=32, target_modules="all-linear"),
                            TrainingConfig(method="qlora", max_steps=steps, batch_size=batch, grad_accum=1, lr=1e-4, packing=False,
                                           max_length=seq, logging_steps=max(1, steps // 4), save_steps=None, progress=False,
                                           gradient_checkpointing=a.gradient_checkpointing),
                            output_dir=Path(tmp)/"run")
        if device == "cuda": torch.cuda.reset_peak_memory_stats()
        res = ft.train(recs)
        n_lora = sum(p.numel() for p in ft.model.parameters() if p.requires_grad)
        peak_gb = (torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
        reserved_gb = torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else None
    tok_s = res.train_tokens / res.seconds
    T = res.train_tokens / max(1, len(recs))
    n_frozen = n_params - cfg["vocab"] * cfg["hidden"]            # without the input embedding (a lookup, not a matmul)
    flops_per_tok = 4 * n_frozen + 6 * n_lora + 12 * cfg["layers"] * cfg["hidden"] * T
    peak, how = peak_flops(device)
    mfu = tok_s * flops_per_tok / peak
    rows = [("device", torch.cuda.get_device_name() if device == "cuda" else "cpu"), ("params", f"{n_params/1e6:.1f}M (LoRA {n_lora/1e6:.2f}M trained)"),
            ("config", json.dumps(cfg)), ("steps x batch x ~tokens", f"{res.steps} x {batch} x {T:.0f}"),
            ("trained tokens", res.train_tokens), ("seconds", f"{res.seconds:.1f}"), ("tokens/s", f"{tok_s:,.0f}"),
            ("peak memory", f"{peak_gb:.2f} GiB allocated, {reserved_gb:.2f} GiB reserved" if device == "cuda" else f"{peak_gb:.2f} GiB (process max RSS)"),
            ("peak FLOP/s", f"{peak/1e9:,.0f} GFLOP/s ({how})"), ("MFU (4N_frozen+6N_lora+12LHT)", f"{mfu:.3f}"),
            ("loss first -> last", f"{res.loss_history[0]['loss']:.3f} -> {res.final_loss:.3f}")]
    w = max(len(k) for k, _ in rows)
    print("QLoRA on a random-init Llama" + (" (tiny config)" if tiny else ""))
    for k, v in rows: print(f"  {k:<{w}}  {v}")
    print(f"tok_s={tok_s:.0f} peak_mem_gb={peak_gb:.2f} mfu={mfu:.4f} params_m={n_params/1e6:.1f} device={device}")

if __name__ == "__main__": main()
