"""The fine-tuning guide's code runs on finetune_nb, changing only imports and environment.

The guide (`../shared/seed/000_a6a76e21248f5164.txt`) is read at test time, never copied here: its code blocks
are cut out of the text, its class definitions give the constructors, keyword names and async-ness that code
written against it relies on, and its usage function `fine_tune_openai()` is run as written against a loopback
`finetune-nb serve` whose model map resolves the guide's OpenAI model name to the embedded tiny model.
"""
import ast, asyncio, inspect, json, math, os, sys, textwrap
from pathlib import Path

import openai
import pytest

import finetune_nb.guide as guide

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT.parent/"shared"/"seed"/"000_a6a76e21248f5164.txt"
HEADINGS = ["Data Preparation", "OpenAI Fine-tuning", "Open-Source Fine-tuning", "Evaluation", "Production Deployment", "References"]
MODEL_MAP = "gpt-4o-mini-2024-07-18=finetune-nb/tiny"


def guide_blocks()->dict[str, str]:
    "The guide's code blocks by section: from the section's first import line to the next heading."
    if not GUIDE.exists(): pytest.skip(f"the fine-tuning guide is not at {GUIDE} (../shared is absent in this checkout)")
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    missing = [h for h in HEADINGS if h not in lines]
    assert not missing, f"{GUIDE}: section headings {missing} not found; the extractor needs updating"
    idx = {h: lines.index(h) for h in HEADINGS}
    out = {}
    for a, b in zip(HEADINGS, HEADINGS[1:]):
        body = lines[idx[a]+1:idx[b]]
        start = next(i for i, l in enumerate(body) if l.startswith(("from ", "import ")))
        out[a] = "\n".join(body[start:]) + "\n"
        ast.parse(out[a], filename=f"{GUIDE}#{a}")   # a SyntaxError names the section
    return out


def guide_classes()->dict[str, ast.ClassDef]:
    "The guide's own classes (the FastAPI request models excluded: the server replaces that app)."
    blocks = guide_blocks()
    return {n.name: n for sec, code in blocks.items() if sec != "Production Deployment"
            for n in ast.parse(code).body if isinstance(n, ast.ClassDef)}


def guide_function(name:str)->str:
    "Source of one top-level function of the guide."
    for code in guide_blocks().values():
        for n in ast.parse(code).body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name: return ast.get_source_segment(code, n)
    raise AssertionError(f"{GUIDE}: no function {name!r}")


# ---------------------------------------------------------------- the guide's classes, keywords and async-ness

def test_extractor_finds_the_guides_code():
    cls = guide_classes()
    assert {"TrainingExample", "DatasetBuilder", "DataAugmenter", "FineTuneJob", "OpenAIFineTuner", "LoRAConfig", "TrainingConfig",
            "HuggingFaceFineTuner", "EvalResult", "FineTuneEvaluator", "ABTestEvaluator"} == set(cls)
    assert "async def fine_tune_openai" in guide_function("fine_tune_openai")


def _params(f:ast.FunctionDef)->list[str]: return [a.arg for a in f.args.args[1:] + f.args.kwonlyargs]

def test_every_guide_method_exists_with_its_keywords():
    "Each of the guide's classes is in finetune_nb.guide, with each public method, its keyword names, and async where the guide awaits it."
    problems = []
    for name, node in guide_classes().items():
        ours = getattr(guide, name, None)
        if ours is None: problems.append(f"{name}: missing from finetune_nb.guide"); continue
        for f in (n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            if f.name.startswith("_") and f.name != "__init__": continue
            meth = getattr(ours, f.name, None)
            if meth is None: problems.append(f"{name}.{f.name}: missing"); continue
            try: inspect.signature(meth).bind_partial(None, **{p: None for p in _params(f)})
            except TypeError as e: problems.append(f"{name}.{f.name}{tuple(_params(f))}: {e}")
            # the async client decides for OpenAIFineTuner (checked end to end below); the others are coroutine functions
            if isinstance(f, ast.AsyncFunctionDef) and name != "OpenAIFineTuner" and not inspect.iscoroutinefunction(meth):
                problems.append(f"{name}.{f.name}: the guide awaits it, ours is not async")
    assert not problems, "\n".join(problems)


def _guide_defaults(node:ast.ClassDef)->dict:
    "The guide's dataclass fields that have literal defaults."
    return {s.target.id: ast.literal_eval(s.value) for s in node.body
            if isinstance(s, ast.AnnAssign) and s.value is not None and not (isinstance(s.value, ast.Constant) and s.value.value is None)}

def test_guide_configs_with_the_guides_keywords_and_defaults():
    cls = guide_classes()
    lora_kw, train_kw = _guide_defaults(cls["LoRAConfig"]), _guide_defaults(cls["TrainingConfig"])
    assert set(lora_kw) == {"r", "lora_alpha", "lora_dropout"} and "fp16" in train_kw and "num_epochs" in train_kw
    lc = guide.LoRAConfig(**{**lora_kw, "r": 16, "lora_alpha": 32, "lora_dropout": 0.1}, target_modules=None)
    assert (lc.r, lc.alpha, lc.dropout, lc.target_modules) == (16, 32, 0.1, ["q_proj", "v_proj"])
    tc = guide.TrainingConfig(**train_kw)       # every field at the guide's default, fp16=True included
    assert (tc.output_dir, tc.epochs, tc.batch_size, tc.lr, tc.warmup, tc.max_length, tc.grad_accum, tc.logging_steps, tc.save_steps) == \
           tuple(train_kw[k] for k in ("output_dir", "num_epochs", "batch_size", "learning_rate", "warmup_steps", "max_length",
                                       "gradient_accumulation_steps", "logging_steps", "save_steps"))
    import torch
    assert tc.resolve_precision() == ("fp16" if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else
                                      "bf16" if torch.cuda.is_available() else "fp32")   # fp16=True cannot run on a CPU
    ex = guide.TrainingExample(system=None, user="u", assistant="a")
    assert ex.to_openai_format() == {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    assert ex.to_alpaca_format() == {"instruction": "u", "input": "", "output": "a"}
    r = guide.EvalResult(input="u", expected="a", actual="a", score=1.0, metrics={"exact_match": 1.0})
    assert (r.score, r.metrics) == (1.0, {"exact_match": 1.0})
    j = guide.FineTuneJob(job_id="ftjob-1", status="queued", model="gpt-4o-mini-2024-07-18")
    assert (j.fine_tuned_model, j.error) == (None, None)


def test_dataset_builder_as_the_guide_uses_it(tmp_path):
    b = guide.DatasetBuilder()
    b.add_example(system="Be brief.", user="I want to return my order", assistant="Your order number, please?")
    b.add_from_conversations([[{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]])
    issues = b.validate()
    assert issues and any("at least 10" in i for i in issues)     # the guide's `if issues: ... return` stops here
    for i in range(10): b.add_example(f"q{i}", f"a{i}")
    issues = b.validate()
    assert not issues and list(issues) == [] and issues.stats["n_examples"] == 12   # ...and goes on here, with the full report kept
    b.export_openai(tmp_path/"t.jsonl"); b.export_alpaca(tmp_path/"t.json")
    assert len((tmp_path/"t.jsonl").read_text().splitlines()) == 12 and len(json.loads((tmp_path/"t.json").read_text())) == 12
    train, val = b.split(train_ratio=0.9)
    assert (len(train), len(val)) == (11, 1)
    with pytest.raises(Exception, match="train_ratio=0.9"): b.split(0.9)   # ours holds out val_frac: 0.9 would be a silent mistake


# ---------------------------------------------------------------- augmentation and the judge against the fake OpenAI

def test_augment_example_and_paraphrase(fake_openai):
    from fake_openai import paraphrase_reply
    fake_openai.chat_reply = paraphrase_reply
    ex = guide.TrainingExample(system="Support agent.", user="Where is my order #123?", assistant="Let me check.")
    async def main():
        aug = guide.DataAugmenter(openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test"), model="gpt-4o-mini")
        return await aug.paraphrase(ex.user), await aug.augment_example(ex, num_variations=2)
    p, vs = asyncio.run(main())
    assert isinstance(p, str) and p != ex.user and "order #123" in p.lower()
    assert vs[0] is ex and len(vs) == 3 and len({v.user for v in vs}) == 3
    assert all(isinstance(v, guide.TrainingExample) and (v.system, v.assistant) == (ex.system, ex.assistant) for v in vs)
    assert [r["model"] for r in fake_openai.chat_requests] == ["gpt-4o-mini"] * 2


# ---------------------------------------------------------------- the OpenAI path against finetune-nb serve

@pytest.fixture(scope="module")
def guide_server(tmp_path_factory, serve_base_model):
    "One `finetune-nb serve` with the guide's model name mapped to the tiny model."
    from fixtures_serve import ServerProc
    p = ServerProc(tmp_path_factory.mktemp("guide-serve"), serve_base_model, env={"FINETUNE_NB_MODEL_MAP": MODEL_MAP}).start()
    yield p
    p.stop()


def _needs_model_map(server):
    ids = [m.id for m in server.client().models.list().data]
    if "gpt-4o-mini-2024-07-18" not in ids:
        pytest.skip("this server has no operator model map (FINETUNE_NB_MODEL_MAP, built on branch `serve`): "
                    f"/v1/models lists {ids}, not gpt-4o-mini-2024-07-18")


def test_fine_tune_openai_as_written(guide_server, tmp_path, monkeypatch, capsys):
    "The guide's `fine_tune_openai()` with `from finetune_nb.guide import *`, OPENAI_BASE_URL at our server, its placeholder filled."
    _needs_model_map(guide_server)
    src = guide_function("fine_tune_openai")
    placeholder = "    # Add more examples...\n"
    assert placeholder in src, "the guide's usage example changed: no '# Add more examples...' placeholder"
    more = "".join(f"    builder.add_example(system='You are a helpful customer service agent.', user='Where is order #{i}?', "
                   f"assistant='Order #{i} ships tomorrow.')\n" for i in range(11))
    ns = {}
    exec(compile("from finetune_nb.guide import *\n" + src.replace(placeholder, more), f"{GUIDE}#fine_tune_openai", "exec"), ns)
    monkeypatch.chdir(tmp_path)                                   # it writes training_data.jsonl to the working directory
    monkeypatch.setenv("OPENAI_BASE_URL", guide_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "no-key")
    assert asyncio.run(ns["fine_tune_openai"]()) is None
    out = capsys.readouterr().out
    assert "Dataset issues" not in out and "Job failed" not in out, out
    file_id = out.split("Uploaded file: ")[1].split()[0]
    job_id = out.split("Created job: ")[1].split()[0]
    model = out.split("Fine-tuned model: ")[1].split()[0]
    c = guide_server.client()
    job = c.fine_tuning.jobs.retrieve(job_id)
    assert (job.status, job.model, job.training_file, job.fine_tuned_model) == ("succeeded", "gpt-4o-mini-2024-07-18", file_id, model)
    assert ":customer-service:" in model and model in [m.id for m in c.models.list().data]
    assert len((tmp_path/"training_data.jsonl").read_text().splitlines()) == 12
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Where is order #3?"}], max_tokens=16)
    assert r.choices[0].message.content is not None and r.model == model


@pytest.fixture(scope="module")
def tuned_model(guide_server):
    "A model fine-tuned on the server from the tiny base (our sync API; a few steps)."
    from finetune_nb.openai_ft import OpenAIFineTuner
    ft = OpenAIFineTuner(guide_server.client(max_retries=2))
    recs = [{"messages": [{"role": "user", "content": f"Where is order #{i}?"}, {"role": "assistant", "content": f"Order #{i} ships tomorrow."}]}
            for i in range(12)]
    job = ft.create_job(recs, model="finetune-nb/tiny", hyperparameters={"n_epochs": 1}, suffix="guide-eval")
    return ft.wait_for_completion(job.job_id, poll_interval=0.5, progress=False).fine_tuned_model


def test_evaluators_as_the_guide_calls_them(guide_server, tuned_model, fake_openai):
    "`await evaluate_example` -> (EvalResult, EvalResult), `await evaluate_dataset` -> the guide's dict, `await compare` -> the judge's dict."
    examples = [guide.TrainingExample(system=None, user=f"Where is order #{i}?", assistant=f"Order #{i} ships tomorrow.") for i in range(3)]
    def judge(req):
        u = req["messages"][-1]["content"]
        a = u.split("## Reply A\n")[1].split("\n\n## Reply B")[0]
        return json.dumps({"winner": "A" if a == "FIRST" else "B", "reasoning": "FIRST is the better reply"})
    fake_openai.chat_reply = judge
    async def main():
        mk = lambda: openai.AsyncOpenAI(base_url=guide_server.base_url, api_key="no-key", max_retries=0)
        evaluator = guide.FineTuneEvaluator(mk(), mk(), "finetune-nb/tiny", tuned_model)
        one = await evaluator.evaluate_example(examples[0])
        summary = await evaluator.evaluate_dataset(examples)
        ab = guide.ABTestEvaluator(openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test"))
        verdict = await ab.compare(examples[0].user, "FIRST", "second")
        return one, summary, verdict, evaluator
    (base_result, ft_result), summary, verdict, evaluator = asyncio.run(main())
    sync = guide_server.client()
    for res, model in ((base_result, "finetune-nb/tiny"), (ft_result, tuned_model)):
        assert isinstance(res, guide.EvalResult) and res.model == model and res.error is None
        direct = sync.chat.completions.create(model=model, messages=[{"role": "user", "content": examples[0].user}], temperature=0, max_tokens=256)
        assert res.actual == direct.choices[0].message.content              # the evaluator asked that model, greedily
        assert res.expected == examples[0].assistant and 0 <= res.score <= 1 and res.metrics["exact_match"] == float(res.actual.strip() == res.expected)
    s = summary["summary"]
    assert s["n_examples"] == 3 and s["errors"] == {"base": 0, "fine_tuned": 0}
    for k, ours in (("base_model", "base"), ("fine_tuned_model", "fine_tuned")):
        assert summary[k] == {"mean_score": s["overall"][ours]["mean"], "min_score": s["overall"][ours]["min"], "max_score": s["overall"][ours]["max"]}
        assert summary[k]["min_score"] <= summary[k]["mean_score"] <= summary[k]["max_score"]
    assert math.isclose(summary["improvement"], summary["fine_tuned_model"]["mean_score"] - summary["base_model"]["mean_score"], abs_tol=1e-9)
    assert (verdict["winner"], verdict["reasoning"], verdict["malformed"]) == ("A", "FIRST is the better reply", False)
    assert [r["model"] for r in fake_openai.chat_requests] == ["gpt-4o", "gpt-4o"]   # the guide's default judge, both orders


# ---------------------------------------------------------------- HuggingFaceFineTuner on the tiny model

def test_hugging_face_fine_tuner_with_the_guides_keywords(tmp_path, capsys):
    cfg = guide.TrainingConfig(output_dir=str(tmp_path/"run"), num_epochs=3, batch_size=4, learning_rate=5e-3, warmup_steps=0,
                               gradient_accumulation_steps=1, fp16=True, logging_steps=1, save_steps=100)
    hf = guide.HuggingFaceFineTuner("finetune-nb/tiny", lora_config=guide.LoRAConfig(r=16, lora_alpha=32, lora_dropout=0.1), training_config=cfg)
    hf.load_model()
    assert hf.tokenizer.pad_token_id != hf.tokenizer.eos_token_id           # the guide's pad = EOS would mask every EOS
    b = guide.DatasetBuilder()
    for i in range(12): b.add_example(f"Where is order #{i}?", "Your order ships tomorrow.", system="Be brief.")
    dataset = hf.prepare_dataset(b.examples)
    assert len(dataset) == 12 and dataset[0].messages[0].role == "system"   # conversations for the chat template, system kept
    res = hf.train(dataset)
    out = capsys.readouterr().out
    assert "Trainable parameters:" in out and "not the guide's" in out
    losses = [h["loss"] for h in res.loss_history if "loss" in h]
    assert res.steps == 9 and len(losses) == 9 and losses[-1] < losses[0] - 1.0, losses   # it learns
    assert (tmp_path/"run"/"adapter"/"adapter_config.json").exists()        # under the guide's output_dir
    reply = hf.generate("Where is order #3?", system="Be brief.", max_new_tokens=24, seed=0)   # the guide's sampling
    assert isinstance(reply, str) and reply.strip() and "### Response" not in reply and "Where is order" not in reply   # the reply alone
