"""The generated-dataset cache shared by Morpho-MNIST and the faces: checksums written last, verified on load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imcf.data.cache import CacheError, load_set, save_set


@pytest.mark.parametrize("meta_file", ["manifest.json", "meta.yaml"])
def test_round_trip_and_every_defect_named(tmp_path: Path, meta_file: str):
    arrays = {"images": np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4), "base": np.zeros((2, 4, 4), np.uint8)}
    table = pd.DataFrame({"index": [0, 1], "u": [0.125, 1 / 3]})
    d = tmp_path / "set"
    save_set(d, arrays, table, {"options": {"seed": 3}}, "table.csv", meta_file, float_format="%.9g")
    got, tab, meta = load_set(d, "table.csv", meta_file, ["images", "base"])
    assert all(np.array_equal(got[k], arrays[k]) for k in arrays)
    assert tab["u"].tolist() == pytest.approx([0.125, 1 / 3], abs=1e-9)
    assert meta["options"] == {"seed": 3} and set(meta["sha256"]) == {"images.npz", "table.csv"}
    (d / "table.csv").write_text((d / "table.csv").read_text().replace("0.125", "0.5"))
    with pytest.raises(CacheError, match=r"checksum mismatch for .*table\.csv"):
        load_set(d, "table.csv", meta_file, ["images"])
    (d / "images.npz").unlink()
    with pytest.raises(CacheError, match=r"images\.npz is missing"):
        load_set(d, "table.csv", meta_file, ["images"])
    save_set(d, arrays, table, {}, "table.csv", meta_file)  # rewriting makes it whole again
    assert load_set(d, "table.csv", meta_file, ["images"])[0]["images"].shape == (2, 4, 4)
    with pytest.raises(CacheError, match="cannot read cache"):
        load_set(d, "table.csv", meta_file, ["not_there"])
    (d / meta_file).unlink()  # an interrupted write: the metadata (the commit) is missing
    with pytest.raises(CacheError, match=f"no complete cache in .*{meta_file} missing"):
        load_set(d, "table.csv", meta_file, ["images"])
