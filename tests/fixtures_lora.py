"Fixtures for the local trainer tests: a toy tokenizer + random Llama (built in ~1 s), and a toy classification task."
import random
from pathlib import Path

import pytest

TOY_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>\n"
                "{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}\n"
                "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
# the same rendering without {% generation %} markers (so the mask must come from offsets); like ChatML's
# "<|im_end|>\n", a newline follows the EOS, and it must not be trained
TOY_TEMPLATE_PLAIN = TOY_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")

COLORS = "red green blue big small old new dark".split()
THINGS = "cat dog car tree house boat bird lamp".split()
LABELS = {"cat": "animal", "dog": "animal", "bird": "animal", "car": "vehicle", "boat": "vehicle",
          "tree": "plant", "house": "place", "lamp": "object"}

def toy_records(pairs)->list[dict]:
    "Records of the toy task: 'classify: the <color> <thing>' -> JSON with the thing's kind."
    return [{"messages": [{"role": "user", "content": f"classify: the {c} {t}"},
                          {"role": "assistant", "content": f'{{"label": "{LABELS[t]}"}}'}]} for c, t in pairs]

def toy_split(seed:int=0, n_test:int=8)->tuple[list[dict], list[dict]]:
    "All 64 color/thing pairs split into train and held-out test records."
    pairs = [(c, t) for c in COLORS for t in THINGS]
    random.Random(seed).shuffle(pairs)
    return toy_records(pairs[n_test:]), toy_records(pairs[:n_test])

def build_toy_model(d, markers:bool=True, hidden:int=32, layers:int=2)->str:
    "Write a byte-level BPE tokenizer (distinct pad/bos/eos, chat template) and a random Llama to `d`."
    import torch
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast, LlamaConfig, LlamaForCausalLM
    d = Path(d); d.mkdir(parents=True, exist_ok=True)
    tk = Tokenizer(models.BPE()); tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); tk.decoder = decoders.ByteLevel()
    corpus = [f'classify: the {c} {t} {{"label": "{LABELS[t]}"}} be brief' for c in COLORS for t in THINGS]
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>")
    tok.chat_template = TOY_TEMPLATE if markers else TOY_TEMPLATE_PLAIN
    tok.save_pretrained(d)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2*hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    torch.manual_seed(0); LlamaForCausalLM(cfg).save_pretrained(d)
    return str(d)

@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory)->str:
    "A toy chat model whose template has {% generation %} markers."
    return build_toy_model(tmp_path_factory.mktemp("toy-model"))

@pytest.fixture(scope="session")
def toy_model_plain_dir(tmp_path_factory)->str:
    "The same toy model with a template without generation markers."
    return build_toy_model(tmp_path_factory.mktemp("toy-model-plain"), markers=False)

@pytest.fixture(scope="session")
def toy_task():
    "(train, held-out) records of the toy classification task."
    return toy_split()
