import pytest
import torch

from imcf.graph import NodeKind
from imcf.io import CheckpointError
from imcf.metrics.offline import CacheMismatchError, cache_path, load_cached, save_cached
from imcf.metrics.predictors import AttributePredictor, judge


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
    from imcf.metrics.offline import cache_key, dataset_fingerprint

    data = build_dataset("linear_gaussian", str(tmp_path), "test", sizes={"train": 10, "val": 10, "test": 10})
    fp = dataset_fingerprint(data)
    assert fp["class"].endswith("LinearGaussianDataset")
    spec = {"dataset": "linear_gaussian", "data": fp}
    assert cache_key(spec) != cache_key({**spec, "data": {**fp, "resolved_options": {"upscale": 6}}})
