"""DPO on the toy model: TRL's DPOTrainer with a LoRA adapter holds one copy of the base (the reference is the adapter
disabled), its held-out preference accuracy rises, the history carries TRL's reward metrics; SFT → DPO; the config
contract."""
import json
import pytest
from finetune_nb.core import ConfigError, DataError
from finetune_nb.lora import LocalFineTuner, LoRAConfig, TrainingConfig
from finetune_nb.evaluate import preference_scores

LABELS = ["animal", "vehicle", "plant", "place", "object"]

def toy_pairs(records):
    "Preference pairs from the toy task: chosen = the right label, rejected = the next label over."
    out = []
    for r in records:
        right = json.loads(r["messages"][-1]["content"])["label"]
        wrong = LABELS[(LABELS.index(right) + 1) % len(LABELS)]
        out.append({"input": {"messages": r["messages"][:-1]}, "preferred_output": [r["messages"][-1]],
                    "non_preferred_output": [{"role": "assistant", "content": json.dumps({"label": wrong})}]})
    return out

def unique_params(*models)->int:
    "Parameters held in memory by these models together, each tensor counted once."
    seen = {}
    for m in models:
        if m is None: continue
        for p in m.parameters(): seen[p.data_ptr()] = p.numel()
    return sum(seen.values())

def test_config_contract():
    tc = TrainingConfig(method="dpo", beta=0.2)
    assert (tc.objective, tc.method, tc.beta) == ("dpo", "lora", 0.2)
    assert (TrainingConfig(method="dpo", load_in_4bit=True).method, TrainingConfig(objective="dpo", method="full").method) == ("qlora", "full")
    assert TrainingConfig().objective == "sft" and TrainingConfig(method="qlora").method == "qlora"
    with pytest.raises(ConfigError, match="beta"): TrainingConfig(method="dpo", beta=0)
    hp = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "beta": 0.3}
    tc = TrainingConfig.from_openai(hp, job_method="dpo")
    assert (tc.objective, tc.beta, tc.epochs, tc.lr) == ("dpo", 0.3, 2, 1e-4)
    assert TrainingConfig.from_openai(tc.to_openai(), job_method="dpo") == tc
    with pytest.raises(ConfigError, match="hyperparameters.beta"): TrainingConfig.from_openai({"beta": 0.3})          # not a supervised hyperparameter
    with pytest.raises(ConfigError, match="hyperparameters.beta"): TrainingConfig.from_openai({"beta": 3}, job_method="dpo")  # (0, 2]

def test_dpo_lora_one_base_copy_and_accuracy_rises(toy_model_dir, toy_task, tmp_path):
    train, test = toy_task
    pairs, held = toy_pairs(train), toy_pairs(test)
    tc = TrainingConfig(method="dpo", beta=0.5, epochs=3, batch_size=8, grad_accum=1, lr=5e-3, logging_steps=2, save_steps=None, progress=False, seed=0)
    ft = LocalFineTuner(toy_model_dir, LoRAConfig(r=8, alpha=16, target_modules="all-linear", dropout=0.0), tc, output_dir=tmp_path/"run")
    from finetune_nb.models import load_model
    base, tok = load_model(toy_model_dir, training=True)
    n_base = sum(p.numel() for p in base.parameters())
    before = preference_scores(base, tok, held, beta=0.5, reference=base)   # the policy before DPO is its own reference
    seen = []
    res = ft.train(pairs, eval_data=held, callbacks=[seen.append])
    tr = ft.trainer
    n_adapter = sum(p.numel() for n, p in tr.model.named_parameters() if "lora_" in n)
    assert n_adapter > 0 and tr.ref_model is None
    assert unique_params(tr.model, tr.ref_model) == n_base + n_adapter        # one copy of the base: the reference is the adapter disabled
    after = preference_scores(ft.model, ft.tokenizer, held, beta=0.5)
    assert before["accuracy"] <= 0.6 and after["accuracy"] >= 0.75 and after["margin"] > 0, (before, after)   # held-out pairs: the ranking learned
    logged = [h for h in res.loss_history if "loss" in h]
    assert logged and all(k in logged[-1] for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"))
    assert any("rewards/margins" in h for h in seen) and any("eval_rewards/accuracies" in h for h in seen) and res.objective == "dpo" and res.data_report["kept"] == len(pairs)
    assert (tmp_path/"run"/"adapter"/"adapter_config.json").exists() and not (tmp_path/"run"/"adapter"/"ref").exists()
    live = json.loads((tmp_path/"run"/"progress.json").read_text())   # the live progress file, as for SFT
    assert live["status"] == "done" and live["step"] == res.steps == live["max_steps"] and live["loss"] == pytest.approx(logged[-1]["loss"])

def test_sft_then_dpo_starts_from_the_adapter(toy_model_dir, toy_task, tmp_path):
    train, test = toy_task
    sft = LocalFineTuner(toy_model_dir, LoRAConfig(target_modules="all-linear"), TrainingConfig(max_steps=3, batch_size=8, grad_accum=1, lr=5e-3, save_steps=None, progress=False),
                         output_dir=tmp_path/"sft")
    sft_dir = sft.train(train).adapter_dir
    ft = LocalFineTuner(toy_model_dir, LoRAConfig(target_modules="all-linear"), TrainingConfig(method="dpo", max_steps=2, batch_size=8, grad_accum=1, lr=5e-3,
                        save_steps=None, progress=False), output_dir=tmp_path/"dpo")
    ft.load_adapter(sft_dir, is_trainable=True)
    from finetune_nb.models import load_model
    n_base = sum(p.numel() for p in load_model(toy_model_dir, training=True)[0].parameters())
    res = ft.train(toy_pairs(train))
    tr = ft.trainer
    n_lora = sum(p.numel() for n, p in tr.model.named_parameters() if "lora_" in n)
    assert tr.ref_model is None and unique_params(tr.model) == n_base + n_lora   # the reference was TRL's frozen copy of the SFT adapter (dropped before saving): one base
    assert res.steps == 2 and (tmp_path/"dpo"/"adapter"/"adapter_model.safetensors").exists()

def test_identical_pair_is_refused(toy_model_dir, tmp_path):
    same = {"input": {"messages": [{"role": "user", "content": "x"}]}, "preferred_output": [{"role": "assistant", "content": "y"}], "non_preferred_output": [{"role": "assistant", "content": "y"}]}
    ft = LocalFineTuner(toy_model_dir, training_config=TrainingConfig(method="dpo", progress=False), output_dir=tmp_path/"r")
    with pytest.raises(DataError, match="train pair 0: chosen and rejected are the same"): ft.train([same])

def test_sft_weight_adds_the_chosen_answers_nll(toy_model_dir, toy_task, tmp_path):
    "`sft_weight` (RPO) reaches TRL as loss_type ['sigmoid', 'sft']: at the first step, from the same weights, the loss exceeds plain DPO's by weight × NLL > 0; full fine-tuning."
    with pytest.raises(ConfigError, match="sft_weight"): TrainingConfig(method="dpo", sft_weight=-1)
    pairs = toy_pairs(toy_task[0])[:16]
    first = {}
    for w in (0.0, 2.0):
        tc = TrainingConfig(objective="dpo", method="full", sft_weight=w, max_steps=1, batch_size=8, grad_accum=1, lr=1e-4, logging_steps=1,
                            save_steps=None, progress=False, seed=0, report_to="none")
        ft = LocalFineTuner(toy_model_dir, training_config=tc, output_dir=tmp_path/f"w{w}")
        res = ft.train(pairs)
        first[w] = next(h for h in res.loss_history if "loss" in h)
        assert ft.trainer.args.loss_type == (["sigmoid", "sft"] if w else ["sigmoid"]) and (tmp_path/f"w{w}"/"model"/"config.json").exists()
    assert first[0.0]["loss"] == pytest.approx(0.6931, abs=1e-3)    # DPO's loss before any update: the policy is its reference
    nll = -first[2.0]["logps/chosen"]   # summed over the answer's tokens; TRL's sft loss is the per-token mean, so just bound it
    assert first[2.0]["loss"] > first[0.0]["loss"] + 0.1 and first[2.0]["loss"] < first[0.0]["loss"] + 2.0 * nll, (first, nll)
