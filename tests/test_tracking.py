"Tracking (TensorBoard by default, MLflow for server jobs, OpenAI's wandb integration) and sharded training (FSDP2 on CPU processes)."
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
