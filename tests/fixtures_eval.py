"Fixtures for the inference/evaluation area: a tiny random Llama (+ a perturbed LoRA adapter) built in seconds."
import os
from pathlib import Path
import pytest


def build_tiny_random(out_dir, seed=0):
    "A tiny random Llama + byte-level BPE tokenizer with a chat template (with generation markers), saved as safetensors."
    out_dir = Path(out_dir)
    if (out_dir/"model.safetensors").exists() and (out_dir/"tokenizer.json").exists(): return str(out_dir)
    import torch
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast, LlamaConfig, LlamaForCausalLM
    tk = Tokenizer(models.BPE()); tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tk.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["system user assistant hello world the quick brown fox jumps over the lazy dog",
                            '{"category": "billing", "priority": "high", "sentiment": "negative"}'] * 20, tr)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}{{ eos_token }}{% endgeneration %}{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True, initializer_range=0.5)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    LlamaForCausalLM(cfg).save_pretrained(tmp); tok.save_pretrained(tmp)
    try: tmp.rename(out_dir)
    except OSError:
        import shutil; shutil.rmtree(tmp, ignore_errors=True)   # built concurrently by another worker
    return str(out_dir)


def build_random_adapter(base_dir, out_dir, seed=1):
    "A LoRA adapter with random (non-zero) B matrices, so it really changes the base model's outputs."
    out_dir = Path(out_dir)
    if (out_dir/"adapter_config.json").exists(): return str(out_dir)
    import torch
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_pretrained(base_dir)
    pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.5)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    pm.save_pretrained(tmp)
    try: tmp.rename(out_dir)
    except OSError:
        import shutil; shutil.rmtree(tmp, ignore_errors=True)
    return str(out_dir)


def _eval_cache()->Path:
    from finetune_nb.core import get_config
    return get_config().cache_dir/"eval-fixtures"


@pytest.fixture(scope="session")
def tiny_random_path():
    "Directory of a tiny random Llama with a chat template (built once, cached under the data dir)."
    return build_tiny_random(_eval_cache()/"tiny-random-llama")


@pytest.fixture(scope="session")
def tiny_random_adapter(tiny_random_path):
    "Directory of a perturbed LoRA adapter for `tiny_random_path`."
    return build_random_adapter(tiny_random_path, _eval_cache()/"tiny-random-adapter")


@pytest.fixture(scope="session")
def tiny_random_model(tiny_random_path):
    "(model, tokenizer) of the tiny random Llama, loaded once."
    from finetune_nb.models import load_model
    return load_model(tiny_random_path, device="cpu")


@pytest.fixture(scope="module")
def one_torch_thread():
    "Run a module's tiny-model work on one torch thread (restored after): on a busy 2-core box, 2 OpenMP threads make a tiny model ~30x slower."
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
