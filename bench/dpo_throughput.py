"""DPO training throughput and memory: ours (`LocalFineTuner`, LoRA, the reference is the base with the adapter disabled)
vs TRL `DPOTrainer` with its defaults and a separate reference model (a second copy of the base).

Same data (preference pairs built from the ticket-triage demo: chosen = the right verdict, rejected = the priority one
step off), same model, same LoRA adapter (r=8, alpha=16, all linear layers), same batch size, max_length and number of
steps (one epoch), same beta. Each recipe runs in its own subprocess, one after the other, so their memory is measured apart:

  (a) TRL: `DPOTrainer(model, ref_model=<second copy>, args=DPOConfig(<defaults>), peft_config=<the LoRA>)`, with only
      what the comparison needs set (output dir, batch size, max_length, epochs, beta, no bf16 on a CPU, no reports);
  (b) ours: `LocalFineTuner(..., TrainingConfig(method="dpo", ...))`: TRL's DPOTrainer with `ref_model=None`, so the
      reference log-probabilities come from the same model with the adapter disabled; no trackers and activation
      checkpointing on, as in (a) (`DPOConfig` defaults to `gradient_checkpointing=True`).

The model (`--model`) defaults to `finetune-nb/small-random`: the tiny model's tokenizer and architecture at 88M random
parameters, near the smallest real LMs, so the reference copy weighs what it does in practice. (On `finetune-nb/tiny`,
2.2M parameters, the copy is 9 MB and activations fill the peak: there the two recipes come out about equal.)

tokens/s = tokens of every pair (prompt + chosen and prompt + rejected, rendered with the chat template) × epochs /
training wall time. Peak memory: `torch.cuda.max_memory_allocated` on a GPU; on a CPU the growth of the process's peak
resident set over its size just before the model was loaded (the model, the reference, activations, optimizer state),
with glibc's large blocks returned when freed (`ALLOCATOR_ENV`), else the peak measures the allocator's cache.

    python bench/dpo_throughput.py [--model finetune-nb/small-random] [--n-pairs 64] [--batch-size 8] [--threads 2]

Last line: `tok_s=T ratio_vs_trl=R mem_ratio_vs_trl=M` (T: ours; R: ours / TRL tokens/s; M: ours / TRL peak memory).
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

LORA = dict(r=8, alpha=16, dropout=0.05, target_modules="all-linear")
# glibc raises its mmap threshold each time a large block is freed, after which freed temporaries stay in the heap and the
# resident set keeps them: the peak RSS then measures the allocator's cache, not the training's memory. A fixed threshold
# returns every large block when it is freed (same for both recipes; read by glibc at process start).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def pairs(n:int, seed:int=0)->list[dict]:
    "`n` OpenAI DPO records from the triage demo."
    from finetune_nb.demo import make_demo_data, demo_preferences
    return demo_preferences(make_demo_data(n, 0, seed)[0], seed=seed)


def pair_tokens(tok, recs:list[dict])->int:
    "Tokens in both sides of every pair, each rendered whole with the chat template (what DPO runs forward)."
    n = 0
    for r in recs:
        for k in ("preferred_output", "non_preferred_output"):
            n += len(tok.apply_chat_template(r["input"]["messages"] + r[k], tokenize=True, return_dict=True)["input_ids"])
    return n


def rss_mb()->float:
    "This process's peak resident set so far, MB (ru_maxrss is KiB on Linux)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb()->float:
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def unique_params(*models)->int:
    seen = {}
    for m in models:
        if m is None: continue
        for p in m.parameters(): seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


def run_one(kind:str, a)->dict:
    "Train one recipe in this process; its figures as a dict."
    import torch
    torch.set_num_threads(a.threads)
    import gc, datasets, peft, trl  # noqa: F401  (everything either recipe imports, before the baseline memory reading)
    from trl import DPOConfig, DPOTrainer  # noqa: F401
    import finetune_nb.lora, finetune_nb.data  # noqa: F401
    from finetune_nb.tiny import resolve_model_path
    from finetune_nb.models import load_model
    model_id = resolve_model_path(a.model)
    recs = pairs(a.n_pairs, a.seed)
    cuda = torch.cuda.is_available()
    out = tempfile.mkdtemp(prefix=f"dpo-bench-{kind}-")
    gc.collect()
    base_rss = current_rss_mb()
    if cuda: torch.cuda.reset_peak_memory_stats()
    if kind == "ours":
        from finetune_nb.lora import LocalFineTuner, LoRAConfig, TrainingConfig
        ft = LocalFineTuner(model_id, LoRAConfig(**LORA), TrainingConfig(method="dpo", beta=a.beta, epochs=1, batch_size=a.batch_size, grad_accum=1,
                            max_length=a.max_length, seed=a.seed, save_steps=None, logging_steps=10_000, progress=False,
                            report_to="none", gradient_checkpointing=True), output_dir=out)   # no trackers, and activation checkpointing as TRL's DPOConfig defaults to
        res = ft.train(recs)
        secs, steps, tok = res.seconds, res.steps, ft.tokenizer
        held = unique_params(ft.trainer.model, ft.trainer.ref_model)
    else:
        from peft import LoraConfig
        from trl import DPOConfig, DPOTrainer
        from finetune_nb.data import _preferences
        import datasets
        model, tok = load_model(model_id, training=True)
        ref, _ = load_model(model_id, training=True)
        ds = datasets.Dataset.from_list([{k: v for k, v in p.to_trl().items() if k != "tools"} for p in _preferences(recs)])
        args = DPOConfig(output_dir=out, per_device_train_batch_size=a.batch_size, max_length=a.max_length, num_train_epochs=1, beta=a.beta,
                         bf16=cuda and torch.cuda.is_bf16_supported(), report_to="none", save_strategy="no", logging_steps=10_000,
                         disable_tqdm=True, seed=a.seed)
        tr = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok,
                        peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear", task_type="CAUSAL_LM"))
        t0 = time.perf_counter()
        tr.train()
        secs, steps = time.perf_counter() - t0, tr.state.global_step
        held = unique_params(tr.model, tr.ref_model)
    tokens = pair_tokens(tok, recs)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb() - base_rss
    return {"kind": kind, "seconds": secs, "steps": steps, "tokens": tokens, "tok_s": tokens / secs, "peak_mb": peak,
            "params_held": held, "device": "cuda" if cuda else "cpu"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-pairs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="finetune-nb/small-random", help="a finetune-nb tiny model name, Hugging Face id or local path")
    ap.add_argument("--run", choices=["ours", "trl"], help=argparse.SUPPRESS)   # a child process: one recipe, one JSON line
    a = ap.parse_args()
    if a.run:
        print("RESULT " + json.dumps(run_one(a.run, a)), flush=True); return
    res = {}
    for kind in ("trl", "ours"):
        argv = [sys.executable, __file__, "--run", kind] + [x for k in ("n_pairs", "batch_size", "max_length", "beta", "threads", "seed", "model")
                                                             for x in (f"--{k.replace('_', '-')}", str(getattr(a, k)))]
        p = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **ALLOCATOR_ENV})
        line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
        if p.returncode or line is None: sys.exit(f"{kind} run failed:\n{p.stderr[-3000:]}")
        res[kind] = json.loads(line[7:])
    t, o = res["trl"], res["ours"]
    print(f"DPO on {a.model}, {a.n_pairs} triage pairs, batch {a.batch_size}, 1 epoch, LoRA r={LORA['r']} all-linear, {o['device']}, {a.threads} thread(s)")
    print(f"{'recipe':44s} {'steps':>5s} {'seconds':>8s} {'tokens/s':>9s} {'peak MB':>8s} {'params held':>12s} {'weights MB':>10s}")
    for name, r in (("TRL DPOTrainer defaults + separate ref model", t), ("ours (LoRA, adapter-disabled reference)", o)):
        print(f"{name:44s} {r['steps']:5d} {r['seconds']:8.1f} {r['tok_s']:9.0f} {r['peak_mb']:8.1f} {r['params_held']:12,d} {r['params_held'] * 4 / 2**20:10.1f}")
    print(f"tokens per epoch {o['tokens']:,}; peak memory = {'CUDA max allocated' if o['device'] == 'cuda' else 'peak RSS growth from loading the model on'}")
    print(f"tok_s={o['tok_s']:.0f} ratio_vs_trl={o['tok_s'] / t['tok_s']:.2f} mem_ratio_vs_trl={o['peak_mb'] / t['peak_mb']:.2f}")


if __name__ == "__main__": main()
