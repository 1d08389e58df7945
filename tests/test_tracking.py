"Tracking (TensorBoard by default; MLflow for server jobs and OpenAI's wandb integration: see test_serve_flow) and sharded training (FSDP2 on CPU processes)."
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from finetune_nb.core import ConfigError
from finetune_nb.lora import LocalFineTuner, LoRAConfig, TrainingConfig

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def _cfg(**kw)->TrainingConfig:
    return TrainingConfig(**{**dict(batch_size=8, grad_accum=1, lr=1e-2, logging_steps=1, progress=False, save_steps=None), **kw})

def _tb_scalars(d:Path, tag:str)->list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(d)); ea.Reload()
    return [(s.step, s.value) for s in ea.Scalars(tag)]

def test_tensorboard_by_default_into_the_run_folder(toy_model_dir, toy_task, tmp_path):
    "The default `report_to=\"auto\"` writes TensorBoard events under <run>/tensorboard holding every logged loss."
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'finetune_nb[tracking]')")
    assert TrainingConfig().report_to == "auto"
    res = LocalFineTuner(toy_model_dir, training_config=_cfg(max_steps=3), output_dir=tmp_path/"run").train(toy_task[0])
    events = list((tmp_path/"run"/"tensorboard").glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in (tmp_path/"run").iterdir())
    logged = [(h["step"], h["loss"]) for h in res.loss_history if "loss" in h]
    assert [s for s, _ in logged] == [1, 2, 3]
    got = _tb_scalars(tmp_path/"run"/"tensorboard", "train/loss")
    assert [s for s, _ in got] == [s for s, _ in logged]
    assert [v for _, v in got] == pytest.approx([v for _, v in logged], rel=1e-5)

def test_report_to_none_writes_no_events(toy_model_dir, toy_task, tmp_path):
    LocalFineTuner(toy_model_dir, training_config=_cfg(max_steps=1, report_to="none"), output_dir=tmp_path).train(toy_task[0])
    assert not (tmp_path/"tensorboard").exists() and not list(tmp_path.rglob("events.out.tfevents.*"))

@pytest.mark.parametrize("name,msg", [("tensorbord", "unknown tracker 'tensorbord'"), ("dvclive", "'dvclive' is not installed")])
def test_unknown_or_missing_tracker_is_a_clear_error(toy_model_dir, toy_task, tmp_path, name, msg):
    pytest.importorskip("transformers")
    if name == "dvclive":
        from transformers.integrations.integration_utils import get_available_reporting_integrations
        if "dvclive" in get_available_reporting_integrations(): pytest.skip("dvclive is installed here")
    with pytest.raises(ConfigError, match=msg):
        LocalFineTuner(toy_model_dir, training_config=_cfg(max_steps=1, report_to=[name]), output_dir=tmp_path).train(toy_task[0])

# --- the server: every job in MLflow, OpenAI's wandb integration ------------------------------------------------

# The server's MLflow tracking and OpenAI's wandb integration are checked on test_serve_flow's job
# (test_full_flow: its server runs with FINETUNE_NB_MLFLOW_URI; the job asks for wandb).

# --- sharded training: FSDP2 on 2 CPU processes ---------------------------------------------------------------------

def test_fsdp2_two_cpu_processes_train_lora_and_the_gathered_adapter_loads(toy_model_dir, tmp_path):
    "torchrun, 2 CPU processes (gloo): each holds half of every weight, both train 7 steps, rank 0's gathered adapter loads."
    script = tmp_path/"train_fsdp.py"
    script.write_text(f"""
import json, os, sys
sys.path.insert(0, {str(ROOT/'tests')!r})
import torch, torch.distributed as dist
from torch.distributed.tensor import DTensor
from fixtures_lora import toy_split
from finetune_nb.lora import LocalFineTuner, LoRAConfig, TrainingConfig
ft = LocalFineTuner({toy_model_dir!r}, LoRAConfig(target_modules="all-linear"),
                    TrainingConfig(epochs=1, batch_size=4, grad_accum=1, lr=1e-2, logging_steps=1, progress=False, save_steps=None, report_to="none"),
                    output_dir={str(tmp_path/'out')!r})
res = ft.train_fsdp(toy_split()[0])
name, p = next((n, p) for n, p in ft.model.named_parameters() if "layers.0.self_attn.q_proj.base_layer.weight" in n)
lora_b = {{n: p.full_tensor().sum().item() for n, p in ft.model.named_parameters() if "lora_B" in n}}
info = dict(rank=dist.get_rank(), world=dist.get_world_size(), backend=dist.get_backend(), steps=res.steps, losses=[h["loss"] for h in res.loss_history],
            dtensor=isinstance(p, DTensor), local_rows=p.to_local().shape[0], full_rows=p.shape[0], lora_b=lora_b)
json.dump(info, open(os.path.join({str(tmp_path)!r}, f"rank{{info['rank']}}.json"), "w"))
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    infos = [json.loads((tmp_path/f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in infos] == [2, 2] and infos[0]["backend"] == "gloo"
    # really sharded (not one whole model per process): each process holds half of the rows of a decoder weight
    assert all(i["dtensor"] and i["local_rows"] * 2 == i["full_rows"] for i in infos)
    # the 56 examples are split: 28 a process, 7 steps of 4; the logged losses are the mean over both processes
    assert infos[0]["steps"] == infos[1]["steps"] == 7 and infos[0]["losses"] == pytest.approx(infos[1]["losses"])
    assert infos[0]["losses"][-1] < infos[0]["losses"][0]
    # rank 0's gathered adapter loads, and holds the trained weights (lora_B starts at zero)
    ad = tmp_path/"out"/"adapter"
    assert (ad/"adapter_model.safetensors").exists() and json.loads((ad/"finetune_nb.json").read_text())["sharded"]["world_size"] == 2
    ft = LocalFineTuner(toy_model_dir).load_adapter(ad)
    loaded = {n: p.sum().item() for n, p in ft.model.named_parameters() if "lora_B" in n}
    assert sorted(loaded) == sorted(infos[0]["lora_b"]) and len(loaded) > 0
    assert [loaded[n] for n in sorted(loaded)] == pytest.approx([infos[0]["lora_b"][n] for n in sorted(loaded)], rel=1e-5, abs=1e-7)
    assert any(abs(v) > 0 for v in loaded.values())

@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [True, False])
def test_cli_train_nproc_two(toy_model_dir, tmp_path, fsdp):
    "`finetune-nb train --nproc 2 [--fsdp]` starts 2 processes under torchrun; rank 0 prints the result once and saves the adapter."
    sys.path.insert(0, str(ROOT/"tests"))
    from fixtures_lora import toy_split
    from finetune_nb.data import write_dataset
    data = tmp_path/"train.jsonl"; write_dataset(toy_split()[0], data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    cmd = [str(Path(sys.executable).parent/"finetune-nb"), "train", str(data), "--base-model", toy_model_dir, "--output-dir", str(tmp_path/"out"),
           "--epochs", "1", "--batch-size", "4", "--grad-accum", "1", "--lr", "1e-2", "--report-to", "none", "--nproc", "2", "--json", *(["--fsdp"] if fsdp else [])]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    docs = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    assert len(docs) == 1 and docs[0]["steps"] == 7, p.stdout[-2000:]   # 56 examples over 2 processes, 4 a batch: 7 steps (one process: 14)
    assert (tmp_path/"out"/"adapter"/"adapter_model.safetensors").exists()
    LocalFineTuner(toy_model_dir).load_adapter(tmp_path/"out"/"adapter")
