"""Counterfactual fine-tuning through train.py: `init` weights, predictors attached, the constrained objective."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from imcf.config import ConfigError
from imcf.evaluation import EvaluationError, evaluate
from imcf.io import safe_torch_load
from imcf.training import train
from imcf.training.run import build_scm

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")


def _cfg(tmp_path, run, *overrides, experiment="morphomnist"):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                f"experiment={experiment}",
                f"run_dir={tmp_path / run}",
                f"data_root={tmp_path / 'data'}",
                "trainer.enable_progress_bar=false",
                "evaluate_after=false",
                "evaluate.progress=false",
                *overrides,
            ],
        )


def test_init_loads_weights_and_leaves_them_trainable(tmp_path):
    first = train(_cfg(tmp_path, "first", "trainer.max_epochs=1", experiment="linear4"))
    scm, _ = build_scm(_cfg(tmp_path, "second", f"+mechanism.x2.init={first['units']['x2']}", experiment="linear4"))
    saved = torch.load(first["units"]["x2"], weights_only=True)["state_dict"]["x2"]
    for k, v in scm.mechanisms["x2"].state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert all(p.requires_grad for p in scm.mechanisms["x2"].parameters())
    with pytest.raises(ConfigError, match="pretrained .* or init"):
        ckpt = first["units"]["x2"]
        both = [f"+mechanism.x2.init={ckpt}", f"+mechanism.x2.pretrained={ckpt}"]
        build_scm(_cfg(tmp_path, "third", *both, experiment="linear4"))
    with pytest.raises(FileNotFoundError, match="mechanism.x2.init=.*no such file"):
        build_scm(_cfg(tmp_path, "fourth", f"+mechanism.x2.init={tmp_path / 'nope.ckpt'}", experiment="linear4"))


SMALL = [
    "dataset.options.num_samples=300",
    "units=[image]",
    "unit_overrides.image.trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "evaluate.predictors.max_epochs=1",
]


def test_finetune_stage_trains_against_separately_seeded_predictors(tmp_path):
    first = train(_cfg(tmp_path, "first", *SMALL, "units=null", "trainer.max_epochs=1"))
    before = torch.load(first["units"]["image"], weights_only=True)["state_dict"]["image"]
    second = train(  # the stage-2 preset: attributes copied frozen, the image fine-tuned
        _cfg(tmp_path, "second", *SMALL, f"init_from={first['run_dir']}", "logger=csv", experiment="morphomnist_cft")
    )
    assert sorted(second["units"]) == ["digit", "image", "intensity", "thickness"]  # attributes copied frozen
    for node in ("thickness", "digit"):
        old = torch.load(first["units"][node], weights_only=True)["state_dict"][node]
        new = torch.load(second["units"][node], weights_only=True)["state_dict"][node]
        assert all(torch.equal(old[k], new[k]) for k in old), node
    path = Path(second["finetune_predictors"]["image"])
    assert path.is_file() and path.parent == tmp_path / "data" / "evaluators"
    cached = torch.load(path, weights_only=True)
    assert cached["meta"]["seed"] == 1 and cached["meta"]["targets"] == {
        "thickness": "continuous",
        "intensity": "continuous",
        "digit": "categorical(10)",
    }
    metrics = pd.read_csv(next((Path(second["run_dir"]) / "logs").rglob("metrics.csv")))
    for col in ("train/image/cf_loss_epoch", "train/image/cf_digit_epoch", "train/image/lagrange_epoch"):
        assert col in metrics and metrics[col].notna().any(), col
    for seed, says in ((0, "effectiveness here uses the evaluator's, of seed 0"), (1, "NOT INDEPENDENT")):
        report = evaluate(
            OmegaConf.create(
                {
                    "run_dir": second["run_dir"],
                    "report_dir": str(tmp_path / f"report{seed}"),
                    "seed": seed,
                    "compute": ["effectiveness"],
                    "num_samples": 24,
                    "predictors": {"max_epochs": 1},
                    "progress": False,
                    "inference": {"image": {"abduction": {"withheld_latent_scale": 1.0}}} if seed == 0 else {},
                }
            )
        )
        meta = json.loads((Path(report) / "metrics.json").read_text())["meta"]
        assert any(says in n for n in meta["notes"]), meta["notes"]
        assert meta["inference"] == ({"image": {"abduction": {"withheld_latent_scale": 1.0}}} if seed == 0 else {})
    with pytest.raises(EvaluationError, match=r"for 'image': \['latent_dim'\] are not inference options of 'vae'"):
        evaluate(OmegaConf.create({"run_dir": second["run_dir"], "inference": {"image": {"latent_dim": 3}}}))
    after = torch.load(second["units"]["image"], weights_only=True)["state_dict"]["image"]
    assert "elbo_bound" not in after and "lagrange_raw" not in after  # fine-tuning state is the trainer's
    last = safe_torch_load(Path(second["run_dir"]) / "checkpoints" / "image" / "last.ckpt")
    assert not torch.isnan(last["state_dict"]["objectives.image.elbo_bound"])
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert any(k.startswith("decoder") for k in moved), moved


@pytest.mark.parametrize("experiment", ["morphomnist_cft", "faces_cft"])
def test_finetune_from_an_untrained_model_is_refused_before_anything_is_written(tmp_path, experiment):
    cfg = _cfg(tmp_path, "run", experiment=experiment)  # the preset without its stage-1 run
    assert list(cfg.units) == ["image"] and cfg.mechanism.image.config.counterfactual_finetune.enabled
    with pytest.raises(ConfigError, match="counterfactual_finetune is enabled but 'image' starts untrained"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_init_from_names_a_missing_unit(tmp_path):
    with pytest.raises(FileNotFoundError, match="init_from=.*no checkpoint of unit 'x1'"):
        build_scm(_cfg(tmp_path, "run", f"init_from={tmp_path / 'empty'}", experiment="linear4"))


def test_finetune_refuses_a_mechanism_that_cannot(tmp_path):
    cfg = _cfg(tmp_path, "run", "+mechanism.x2.config.counterfactual_finetune={enabled: true}", experiment="linear4")
    with pytest.raises(ConfigError, match=r"mechanism.x2.config \(linear_gaussian\): .*counterfactual_finetune"):
        train(cfg)
