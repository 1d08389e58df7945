"""Local training throughput: the naive recipe vs TRL `SFTTrainer` defaults vs `finetune_nb.lora.LocalFineTuner`.

Same data (the bundled ticket-triage task), same tiny model (`finetune-nb/tiny`), same LoRA adapter (r=8 on q/v), same
number of epochs, in one process:

  (a) naive: the chat template rendered to text, `padding="max_length"` to 512 with pad = EOS,
      `DataCollatorForLanguageModeling` (loss on every non-pad token, so EOS is never learned), transformers `Trainer`
      with the same hyperparameters as (c);
  (b) TRL `SFTTrainer` with its defaults (batch 8, lr 2e-5, dynamic padding, gradient checkpointing, loss on all tokens),
      except `bf16=False` (TRL's default is bf16), so that all three train in fp32 on the CPU;
  (c) ours: `LocalFineTuner` with its defaults plus `packing=True` (padding-free batches, assistant-only loss; packing is
      off by default because it needs an attention implementation that handles packed rows well, see `04_lora`).

Each batch is counted as it enters the model: real tokens/s = non-pad tokens / training wall time; padding waste =
pad tokens / all tokens processed. Final eval loss is measured the same way for all three: mean NLL of the assistant
tokens (+EOS) of the held-out conversations.

    python bench/train_throughput.py [--n-train 300] [--epochs 1] [--threads 1]

Last line: `tok_s=N ratio_vs_seed=R1 ratio_vs_trl=R2 padding_waste=W`.
"""
import argparse, os, sys, tempfile, time, warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

class Counting:
    "Wraps a data collator and counts real vs processed tokens of every batch it builds (training batches only)."
    def __init__(self, collate, pad_id):
        self.collate, self.pad_id, self.real, self.total, self.on = collate, pad_id, 0, 0, True
    def __call__(self, features):
        b = self.collate(features)
        if self.on:
            ids = b["input_ids"]
            self.total += ids.numel()
            self.real += int(b["attention_mask"].sum()) if "attention_mask" in b else int((ids != self.pad_id).sum())
        return b

def eval_loss(model, tok, records, max_length=512)->float:
    "Mean NLL over the assistant tokens (+EOS) of `records`, identical for every recipe."
    import torch
    from finetune_nb.lora import ChatCollator, tokenize_conversation
    model.eval()
    feats = [tokenize_conversation(tok, r, max_length) for r in records]
    coll, nll, n = ChatCollator(tok.pad_token_id), 0.0, 0
    with torch.no_grad():
        for i in range(0, len(feats), 16):
            b = coll(feats[i:i+16])
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits[:, :-1]
            labels = b["labels"][:, 1:]
            nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                     ignore_index=-100, reduction="sum").item()
            n += int((labels != -100).sum())
    return nll / n

def lora_cfg():
    from peft import LoraConfig
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")

def run_naive(path, train, test, epochs, out):
    "(a) pad to 512 with pad = EOS, DataCollatorForLanguageModeling, loss on everything."
    import datasets
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainingArguments
    from finetune_nb.lora import TrainingConfig
    tc = TrainingConfig()
    tok = AutoTokenizer.from_pretrained(path); tok.pad_token = tok.eos_token
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in train]
    ds = datasets.Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"], padding="max_length", max_length=512, truncation=True, add_special_tokens=False),
        batched=True, remove_columns=["text"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), lora_cfg())
    coll = Counting(DataCollatorForLanguageModeling(tok, mlm=False), None)
    args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=tc.batch_size,
                             gradient_accumulation_steps=tc.grad_accum, learning_rate=tc.lr, warmup_steps=tc.warmup,
                             logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=tc.seed)
    tr = Trainer(model=model, args=args, train_dataset=ds, data_collator=coll); tr.remove_callback(PrinterCallback)
    t = time.perf_counter(); tr.train(); secs = time.perf_counter() - t
    return dict(real=coll.real, total=coll.total, secs=secs, eval=eval_loss(model, AutoTokenizer.from_pretrained(path), test))

def run_trl(path, train, test, epochs, out):
    "(b) TRL SFTTrainer with its defaults (conversational data, same LoRA adapter)."
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    args = SFTConfig(output_dir=out, num_train_epochs=epochs, save_strategy="no", report_to="none", disable_tqdm=True,
                     use_cpu=True, bf16=False)
    tr = SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(train), processing_class=tok, peft_config=lora_cfg())
    tr.data_collator = coll = Counting(tr.data_collator, tok.pad_token_id); tr.remove_callback(PrinterCallback)
    t = time.perf_counter(); tr.train(); secs = time.perf_counter() - t
    return dict(real=coll.real, total=coll.total, secs=secs, eval=eval_loss(tr.model, tok, test))

def run_ours(path, train, test, epochs, out):
    "(c) LocalFineTuner defaults + packing (padding-free)."
    from finetune_nb.lora import LocalFineTuner, LoRAConfig, TrainingConfig
    import finetune_nb.lora as L
    counters = []
    class CountingCollator(L.ChatCollator):   # count what reaches the model, exactly as for (a) and (b)
        def __init__(self, *a, **k):
            super().__init__(*a, **k); counters.append(self); self.c = Counting(super().__call__, self.pad_token_id)
        def __call__(self, features): return self.c(features)
    orig, L.ChatCollator = L.ChatCollator, CountingCollator
    try:
        ft = LocalFineTuner(path, LoRAConfig(), TrainingConfig(epochs=epochs, packing=True, save_steps=None, progress=False), output_dir=out)
        res = ft.train(train)
    finally: L.ChatCollator = orig
    c = counters[-1].c
    return dict(real=c.real, total=c.total, secs=res.seconds, eval=eval_loss(ft.model, ft.tokenizer, test))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--model", default="finetune-nb/tiny")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a busy machine; tiny matmuls gain little from more)")
    a = ap.parse_args(argv)
    import torch, transformers
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    from finetune_nb.demo import make_demo_data
    from finetune_nb.tiny import resolve_model_path
    path = resolve_model_path(a.model)
    train, test = make_demo_data(n_train=a.n_train, n_test=a.n_test, seed=0)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in [("naive (pad 512, pad=EOS)", run_naive), ("TRL SFTTrainer defaults", run_trl), ("ours (LocalFineTuner, packing)", run_ours)]:
            torch.manual_seed(0)
            rows[name] = r = fn(path, train, test, a.epochs, str(Path(tmp)/name.split()[0]))
            r["tok_s"], r["waste"] = r["real"] / r["secs"], 1 - r["real"] / r["total"]
            print(f"  done: {name} in {r['secs']:.1f}s", file=sys.stderr)
    print(f"\nLocal training throughput: {a.model}, {len(train)} examples x {a.epochs:g} epoch(s), LoRA r=8 q/v, CPU threads={torch.get_num_threads()}")
    print(f"{'recipe':<32}{'real tok/s':>12}{'pad waste':>11}{'real tokens':>13}{'seconds':>9}{'eval loss':>11}")
    for name, r in rows.items():
        print(f"{name:<32}{r['tok_s']:>12,.0f}{r['waste']:>11.1%}{r['real']:>13,}{r['secs']:>9.1f}{r['eval']:>11.3f}")
    (naive, trl, ours) = rows.values()
    print("(eval loss: mean NLL of assistant tokens + EOS on the held-out set, same for all)")
    print(f"eval loss ours {ours['eval']:.3f} vs TRL {trl['eval']:.3f}: " + ("no worse (goal met)" if ours["eval"] <= trl["eval"] else "WORSE than TRL (goal missed)"))
    print(f"tok_s={ours['tok_s']:.0f} ratio_vs_seed={ours['tok_s']/naive['tok_s']:.2f} ratio_vs_trl={ours['tok_s']/trl['tok_s']:.2f} "
          f"padding_waste={ours['waste']:.3f}")

if __name__ == "__main__": main()
