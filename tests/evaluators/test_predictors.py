import pytest
import torch

from imcf.evaluators.cache import CacheMismatchError, cache_path, load_cached, save_cached
from imcf.evaluators.predictors import AttributePredictor, grey_levels, judge, random_shift
from imcf.graph import NodeKind
from imcf.io import CheckpointError


def test_predictor_reads_every_target_in_batch_format():
    model = AttributePredictor(
        [1, 16, 16], {"t": "continuous", "b": "binary", "d": "categorical(4)"}, {"t": ["b"]}, width=8
    )
    model.set_target_stats({"t": torch.tensor([10.0, 20.0, 30.0])})
    batch = {
        "image": torch.rand(5, 1, 16, 16),
        "t": torch.rand(5, 1),
        "b": torch.ones(5, 1),
        "d": torch.eye(4)[[0] * 5],
    }
    out = model(batch["image"], batch)
    assert out["t"].shape == (5, 1) and out["b"].shape == (5, 1) and out["d"].shape == (5, 4)
    assert torch.all((out["b"] > 0) & (out["b"] < 1))
    torch.testing.assert_close(out["d"].sum(1), torch.ones(5))
    assert model.features(batch["image"]).shape == (5, model.num_features)
    assert torch.isfinite(model.loss(batch)["loss"])


def test_categorical_heads_train_on_smoothed_labels():
    """The digit head's loss is (1 - e) x cross-entropy + e x the mean negative log-probability over classes
    (e = label_smoothing, 0.1 by default); e = 0 is plain cross-entropy; e outside [0, 1) is refused."""
    torch.manual_seed(0)
    model = AttributePredictor([1, 16, 16], {"d": "categorical(4)"}, width=8).eval()
    batch = {"image": torch.rand(6, 1, 16, 16) * 2 - 1, "d": torch.eye(4)[[0, 1, 2, 3, 1, 2]]}
    with torch.no_grad():
        logp = torch.log_softmax(model._logits(model.features(batch["image"]), batch)["d"], 1)
        ce = -logp[torch.arange(6), batch["d"].argmax(1)].mean()
        uniform = -logp.mean()
        assert model.label_smoothing == 0.1
        torch.testing.assert_close(model.loss(batch)["d"], 0.9 * ce + 0.1 * uniform)
        model.label_smoothing = 0.0
        torch.testing.assert_close(model.loss(batch)["d"], ce)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        AttributePredictor([1, 16, 16], {"d": "categorical(4)"}, width=8, label_smoothing=1.0)


def test_grey_levels_read_the_bright_pixels_and_pass_gradients():
    """The grey-level path: quantiles of the pixels at or above half the range, their share and the maximum;
    a dimmer copy of a stroke moves every quantile by the same factor (what a per-image norm would hide)."""
    stroke = torch.full((1, 1, 8, 8), -1.0)
    stroke[..., 2:6, 3] = torch.tensor([0.2, 0.4, 0.6, 1.0])  # bright pixels on [0, 1]: 0.6, 0.7, 0.8, 1.0
    stroke[..., 0, 0] = -0.2  # 0.4 on [0, 1]: below half the range, not a bright pixel
    grey = grey_levels(stroke, 3)
    torch.testing.assert_close(grey, torch.tensor([[0.6, 0.75, 1.0, 4 / 64, 1.0]]))
    dim = grey_levels((stroke + 1) / 2 - 1, 3)  # every grey level halved
    torch.testing.assert_close(dim[:, :3], grey[:, :3] / 2)
    image = stroke.clone().requires_grad_(True)
    grey_levels(image, 3)[:, 1].sum().backward()
    assert image.grad.abs().sum() > 0


def test_random_shift_translates_each_image_within_bounds():
    torch.manual_seed(0)
    images = torch.rand(6, 2, 10, 10)
    shifted = random_shift(images, 2)
    assert shifted.shape == images.shape
    for x, y in zip(images, shifted):
        offsets = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(torch.roll(x, (dy, dx), (1, 2))[:, 2:-2, 2:-2], y[:, 2:-2, 2:-2])
        ]
        assert len(offsets) == 1


def test_poor_predictors_are_flagged():
    cont, binary = NodeKind("continuous"), NodeKind("binary")
    assert judge(cont, {"nmae": 0.1}, 0.5, 0.7, 0.0) == ""
    assert "std" in judge(cont, {"nmae": 0.9}, 0.5, 0.7, 0.0)
    assert "F1" in judge(binary, {"f1": 0.4, "acc": 0.9}, 0.5, 0.7, 0.5)
    assert "majority" in judge(binary, {"f1": 0.8, "acc": 0.6}, 0.5, 0.7, 0.6)


def test_cache_for_another_dataset_is_refused(tmp_path):
    spec = {"dataset": "faces", "options": {"seed": 0}, "targets": {"smiling": "binary"}}
    path = cache_path(tmp_path, "predictors-image", spec)
    assert path.name.startswith("faces-predictors-image-")
    save_cached(path, spec, {"state_dict": {}})
    assert load_cached(path, spec, "predictors")["meta"]["dataset"] == "faces"
    with pytest.raises(CacheMismatchError, match="trained on dataset 'faces'.*evaluates 'morphomnist'"):
        load_cached(path, {**spec, "dataset": "morphomnist"}, "predictors")
    with pytest.raises(CacheMismatchError, match="options"):
        load_cached(path, {**spec, "options": {"seed": 1}}, "predictors")
    path.write_bytes(path.read_bytes()[:50])  # a truncated cache names the file and the way back
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*faces-predictors.*delete it and"):
        load_cached(path, spec, "predictors")


def test_cache_key_follows_the_dataset_content(tmp_path):
    from imcf.data.datamodule import build_dataset
    from imcf.evaluators.cache import cache_key, dataset_fingerprint

    data = build_dataset("linear_gaussian", str(tmp_path), "test", sizes={"train": 10, "val": 10, "test": 10})
    fp = dataset_fingerprint(data)
    assert fp["class"] == "linear_gaussian"  # the registered name: moving the class keeps its caches
    plain = type("Plain", (), {"options": None})()  # an unregistered dataset: its qualified name
    assert dataset_fingerprint(plain)["class"].endswith("Plain")
    spec = {"dataset": "linear_gaussian", "data": fp}
    assert cache_key(spec) != cache_key({**spec, "data": {**fp, "resolved_options": {"upscale": 6}}})


def test_a_mismatched_fine_tuning_cache_names_the_setting_it_came_from(tmp_path):
    """finetune_predictors.path pointing at another dataset's cache: the message names that key (it said
    `predictors.path`, a setting the user had not touched)."""
    from omegaconf import OmegaConf

    from imcf.config import PredictorConfig
    from imcf.evaluators.predictors import load_or_train_predictors

    file = tmp_path / "other.ckpt"
    save_cached(file, {"dataset": "faces"}, {"state_dict": {}})
    cfg = OmegaConf.structured(PredictorConfig)
    cfg.path = str(file)
    args = ("morphomnist", {}, str(tmp_path), "image", (1, 32, 32), {"thickness": "continuous"}, cfg)
    with pytest.raises(CacheMismatchError, match=r"remove finetune_predictors\.path to train new ones"):
        load_or_train_predictors(*args, setting="finetune_predictors")
    with pytest.raises(CacheMismatchError, match=r"remove predictors\.path to train new ones"):
        load_or_train_predictors(*args)


def test_evaluator_models_are_a_function_of_their_seed_not_of_the_process(tmp_path):
    """The predictors and the minimality VAE took their initial weights from torch's global generator before
    their seed was set: trained after a training run in the same process, or by evaluate.py alone, the "seed-0"
    judges differed (a do(digit) FID of 1.51 read as 0.98 on the same counterfactuals). Trained twice from
    different process states, each is now the same model, and the process's own generator is left as it was."""
    from omegaconf import OmegaConf

    from imcf.config import MinimalityConfig, PredictorConfig
    from imcf.evaluators.cache import seeded
    from imcf.evaluators.minimality_vae import load_or_train_vae
    from imcf.evaluators.predictors import load_or_train_predictors

    options = {"sizes": {"train": 64, "val": 16, "test": 16}, "size": 16, "workers": 1}
    pred_cfg = OmegaConf.structured(PredictorConfig(inputs={}, width=4, max_epochs=1, batch_size=32))
    vae_cfg = OmegaConf.structured(MinimalityConfig(latent_dim=2, width=4, max_epochs=1, batch_size=32))
    states = []
    for run, draws in enumerate((0, 7)):
        torch.manual_seed(123)
        torch.rand(draws)  # another history before the evaluator's models are built
        root = str(tmp_path / f"run{run}")
        targets = {"smiling": "binary"}
        pred, _, _ = load_or_train_predictors("faces", options, root, "image", (3, 16, 16), targets, pred_cfg,
                                              "cpu", progress=False)  # fmt: skip
        vae, _ = load_or_train_vae("faces", options, root, "image", (3, 16, 16), vae_cfg, "cpu", progress=False)
        states.append((pred.state_dict(), vae.state_dict()))
    for first, second in zip(*states):
        assert first.keys() == second.keys()
        for key in first:
            torch.testing.assert_close(first[key], second[key], rtol=0, atol=0, msg=key)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    seeded(0, lambda: torch.nn.Linear(3, 3))
    torch.testing.assert_close(torch.rand(3), expected)  # the caller's draws are not shifted
