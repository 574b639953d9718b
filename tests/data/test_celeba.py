"""The real-CelebA loader on a tiny fixture written in the exact CelebA release format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from imcf.data.celeba import CELEBA_ATTRIBUTES, CelebADataset, CelebAFormatError
from imcf.data.datamodule import CausalDataModule

# six images: (file, partition, attributes set to 1); every other attribute is -1
ROWS = [
    ("000001.jpg", 0, {"Smiling", "Young", "No_Beard"}),
    ("000002.jpg", 0, {"Eyeglasses", "Male", "Bald"}),
    ("000003.jpg", 0, {"Smiling", "Eyeglasses", "Male", "Young", "No_Beard"}),
    ("000004.jpg", 1, {"Male"}),
    ("000005.jpg", 2, {"Young", "Smiling", "No_Beard"}),
    ("000006.jpg", 2, {"Male", "Bald", "Eyeglasses"}),
]


def write_celeba(root: Path, rows=ROWS) -> Path:
    """Write a tiny CelebA release (178x218 JPEGs, attribute and partition lists) under root/celeba."""
    d = root / "celeba"
    (d / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, (name, _, _) in enumerate(rows):
        px = np.full((218, 178, 3), 30 * k % 256, np.uint8)
        centre = rng.integers(0, 256, (150, 150, 3)) // 4 + 40 * k % 192  # the centre 150
        px[34:184, 14:164] = centre.astype(np.uint8)
        Image.fromarray(px).save(d / "img_align_celeba" / name, quality=95)
    lines = [str(len(rows)), " ".join(CELEBA_ATTRIBUTES) + " "]  # the release has a trailing space here
    for name, _, on in rows:
        lines.append(name + " " + " ".join(f"{1 if a in on else -1:2d}" for a in CELEBA_ATTRIBUTES))
    (d / "list_attr_celeba.txt").write_text("\r\n".join(lines) + "\r\n")  # the release uses CRLF
    (d / "list_eval_partition.txt").write_text("".join(f"{n} {p}\r\n" for n, p, _ in rows))
    return d


def release_rows(n: int = 36, seed: int = 0) -> list[tuple[str, int, set[str]]]:
    """n rows (two thirds train, a sixth each val and test), attributes drawn at random, both classes of
    Smiling and Eyeglasses present in every split."""
    rng = np.random.default_rng(seed)
    names = ("Smiling", "Eyeglasses", "Male", "Young", "No_Beard", "Bald")
    out = []
    for i in range(n):
        split = 0 if i < 2 * n // 3 else (1 if i < 5 * n // 6 else 2)
        on = {a for a in names if rng.random() < 0.5}
        on ^= {"Smiling"} if (i % 2 == 0) != ("Smiling" in on) else set()  # alternate Smiling
        on ^= {"Eyeglasses"} if (i % 3 == 0) != ("Eyeglasses" in on) else set()
        out.append((f"{i + 1:06d}.jpg", split, on))
    return out


@pytest.fixture
def celeba_root(tmp_path: Path) -> Path:
    write_celeba(tmp_path)
    return tmp_path


def test_loads_splits_attributes_and_images(celeba_root: Path):
    expect = {"train": [0, 1, 2], "val": [3], "test": [4, 5]}
    for split, rows in expect.items():
        ds = CelebADataset(str(celeba_root), split)
        assert len(ds) == len(rows) and ds.files == [ROWS[r][0] for r in rows]
        for i, r in enumerate(rows):
            item = ds[i]
            on = ROWS[r][2]
            for a in ("Smiling", "Eyeglasses", "Young", "Male", "Bald", "No_Beard"):
                assert item[a].shape == (1,) and item[a].dtype == torch.float32
                assert item[a].item() == float(a in on), (split, r, a)
            assert item["Beard"].item() == float("No_Beard" not in on)  # derived: not No_Beard
            assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
            assert -1 <= item["image"].min() and item["image"].max() <= 1
            assert item["_index"].item() == i
    assert len(CelebADataset(str(celeba_root), "train").attribute_names) == 41


def test_centre_crop_and_configurable_size(celeba_root: Path):
    ds = CelebADataset(str(celeba_root), "val", size=32, crop=150)
    img = ds[0]["image"]
    assert img.shape == (3, 32, 32)
    # the centre 150x150 of image 4 holds values in [120, 183]; the border (value 90) is cropped away
    px = (img + 1) * 127.5
    assert px.min() > 105, px.min()
    full = CelebADataset(str(celeba_root), "val", size=32, crop=None)[0]["image"]
    assert ((full + 1) * 127.5).min() < 100  # without the crop the border is seen


def test_graph_selects_attribute_nodes(celeba_root: Path):
    repo = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((repo / "configs/graph/celeba_complex.yaml").read_text())
    ds = CelebADataset(str(celeba_root), "train", graph=spec)
    item = ds[1]
    assert set(item) == {"Young", "Male", "Beard", "Bald", "image", "_index"}
    assert (item["Young"].item(), item["Male"].item(), item["Beard"].item(), item["Bald"].item()) == (0, 1, 1, 1)
    simple = yaml.safe_load((repo / "configs/graph/celeba_simple.yaml").read_text())
    dm = CausalDataModule("celeba", root=str(celeba_root), batch_size=3, graph=simple)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["Smiling"].shape == (3, 1)
    with pytest.raises(ValueError, match=r"shape \[3, 32, 32\]"):
        CelebADataset(str(celeba_root), "train", size=32, graph=simple)
    with pytest.raises(KeyError, match="Not_An_Attribute"):
        CelebADataset(str(celeba_root), "train", attributes=["Smiling", "Not_An_Attribute"])


def test_missing_files_name_the_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"celeba/list_attr_celeba\.txt.*line 1 the image count"):
        CelebADataset(str(tmp_path), "train")
    d = write_celeba(tmp_path)
    (d / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"list_eval_partition\.txt.*<0\|1\|2>"):
        CelebADataset(str(tmp_path), "train")
    (d / "list_eval_partition.txt").write_text("000001.jpg 0\n000009.jpg 0\n")
    with pytest.raises(CelebAFormatError, match="000009.jpg"):
        CelebADataset(str(tmp_path), "train")
    (d / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 0\n000003.jpg 1\n")
    (d / "img_align_celeba" / "000002.jpg").unlink()  # a partial release: named when the split is opened
    with pytest.raises(FileNotFoundError, match=r"img_align_celeba/000002\.jpg: 1 of the 2 train images listed"):
        CelebADataset(str(tmp_path), "train")
    assert len(CelebADataset(str(tmp_path), "val")) == 1  # the other splits still open
    ds = CelebADataset(str(tmp_path), "val")
    (d / "img_align_celeba" / "000003.jpg").unlink()  # removed after opening: named when read
    with pytest.raises(FileNotFoundError, match=r"img_align_celeba/000003\.jpg"):
        ds[0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ls: ["six"] + ls[1:], r"line 1 is 'six', not the image count"),
        (lambda ls: ls[:-1], r"announces 6 images but 5 lines follow"),
        (lambda ls: ls[:4] + [ls[4].replace(" 1", " 0", 1)] + ls[5:], r"line 5, attribute .*: value '0'"),
        (lambda ls: ls[:3] + [ls[3].rsplit(" ", 1)[0]] + ls[4:], r"line 4 does not have a file name and 40"),
    ],
)
def test_malformed_attribute_file(celeba_root: Path, edit, message):
    path = celeba_root / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(CelebAFormatError, match=r"list_attr_celeba\.txt.*" + message):
        CelebADataset(str(celeba_root), "train")


def test_malformed_partition_file(celeba_root: Path):
    (celeba_root / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg train\n")
    with pytest.raises(CelebAFormatError, match=r"list_eval_partition\.txt: line 2 is not"):
        CelebADataset(str(celeba_root), "train")
