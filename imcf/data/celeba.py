"""The real CelebA release (aligned and cropped images + attribute and partition lists); nothing downloaded.

Expected layout (torchvision's, under `<root>/<folder>`, folder "celeba" by default):

    img_align_celeba/000001.jpg ...
    list_attr_celeba.txt       line 1: image count; line 2: the 40 attribute names; then one line per image:
                               "<file>.jpg" and one value per attribute, 1 (present) or -1 (absent)
    list_eval_partition.txt    one line per image: "<file>.jpg <0|1|2>" (0 train, 1 val, 2 test)

A sample holds `image` (3, size, size) in [-1, 1] (centre crop `crop`, then resize to `size`), every selected
attribute as a (1,) float in {0, 1}, and `_index`. Real data has no exogenous noise and no true counterfactuals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.datasets import CelebA
from torchvision.datasets.utils import check_integrity
from torchvision.transforms.v2 import functional as TF

from imcf.data.base import CausalDataset, whole_option
from imcf.graph import CausalGraph
from imcf.io import MissingFileError
from imcf.registry import DATASETS

IMAGE_DIR = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
#: the partition codes of list_eval_partition.txt
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
#: the 40 attribute names of list_attr_celeba.txt, in file order
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
#: derived attributes: name -> the CelebA attribute it negates
DERIVED = {"Beard": "No_Beard"}

ATTRIBUTE_FORMAT = (
    f"{ATTRIBUTE_FILE} format: line 1 the image count, line 2 the attribute names, then one line per image: "
    "'<file>.jpg' followed by one value per attribute, 1 or -1, separated by spaces"
)
PARTITION_FORMAT = f"{PARTITION_FILE} format: one line per image, '<file>.jpg <0|1|2>' (0 train, 1 val, 2 test)"


class CelebAFormatError(ValueError):
    """A CelebA file is malformed; the message names the path and the expected format (missing files raise
    FileNotFoundError with the same kind of message)."""


def read_attributes(path: Path) -> pd.DataFrame:
    """Parse list_attr_celeba.txt into a DataFrame indexed by file name with {0, 1} int8 columns."""
    if not path.is_file():
        raise MissingFileError(f"missing attribute file {path} (expected {ATTRIBUTE_FORMAT})")
    with open(path) as f:
        first, second = f.readline(), f.readline()
    try:
        count = int(first.strip())
    except ValueError:
        raise CelebAFormatError(
            f"{path}: line 1 is {first.strip()!r}, not the image count ({ATTRIBUTE_FORMAT})"
        ) from None
    names = second.split()
    if not names or any(n.lstrip("-").isdigit() for n in names):
        raise CelebAFormatError(f"{path}: line 2 must list the attribute names, got {second.strip()!r}")
    if len(set(names)) != len(names):
        raise CelebAFormatError(f"{path}: line 2 repeats an attribute name: {names}")
    try:
        table = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, dtype=str, engine="c")
    except pd.errors.EmptyDataError:
        table = pd.DataFrame(columns=range(len(names) + 1))
    except pd.errors.ParserError as e:
        raise CelebAFormatError(f"{path}: {e} ({ATTRIBUTE_FORMAT})") from None
    if table.shape[1] != len(names) + 1 or table.isna().any().any():
        bad = int(table.isna().any(axis=1).to_numpy().argmax()) if table.isna().any().any() else 0
        raise CelebAFormatError(
            f"{path}: line {bad + 3} does not have a file name and {len(names)} values ({ATTRIBUTE_FORMAT})"
        )
    if len(table) != count:
        raise CelebAFormatError(f"{path}: line 1 announces {count} images but {len(table)} lines follow")
    values = table.iloc[:, 1:].to_numpy()
    ok = (values == "1") | (values == "-1")
    if not ok.all():
        row, col = np.argwhere(~ok)[0]
        raise CelebAFormatError(
            f"{path}: line {row + 3}, attribute {names[col]!r}: value {values[row, col]!r} is not 1 or -1"
        )
    out = pd.DataFrame((values == "1").astype(np.int8), columns=names, index=table.iloc[:, 0].to_numpy())
    if out.index.has_duplicates:
        raise CelebAFormatError(f"{path}: file {out.index[out.index.duplicated()][0]!r} is listed twice")
    return out


def read_partition(path: Path) -> pd.Series:
    """Parse list_eval_partition.txt into a Series file name -> partition code (0, 1, 2)."""
    if not path.is_file():
        raise MissingFileError(f"missing partition file {path} (expected {PARTITION_FORMAT})")
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, dtype=str, engine="c")
    except pd.errors.EmptyDataError:
        raise CelebAFormatError(f"{path} is empty ({PARTITION_FORMAT})") from None
    except pd.errors.ParserError as e:
        raise CelebAFormatError(f"{path}: {e} ({PARTITION_FORMAT})") from None
    codes = table.iloc[:, -1].to_numpy()
    ok = np.isin(codes, ["0", "1", "2"]) if table.shape[1] == 2 else np.zeros(len(table), bool)
    if not ok.all() or table.isna().any().any():
        row = int(np.argmin(ok & ~table.isna().any(axis=1).to_numpy()))
        raise CelebAFormatError(f"{path}: line {row + 1} is not '<file>.jpg <0|1|2>' ({PARTITION_FORMAT})")
    return pd.Series(codes.astype(int), index=table.iloc[:, 0].to_numpy())


@DATASETS.register("celeba")
class CelebADataset(CausalDataset):
    """One split of real CelebA, centre-cropped and resized; attributes in {0, 1}.

    `attributes` selects the attribute nodes (CelebA names or a DERIVED name such as Beard); `graph` (a graph
    spec) selects them from its binary nodes instead and checks its image node. Default: all 40 plus DERIVED.
    `verify_md5` checks the two text files against the checksums torchvision lists for the official release.
    """

    default_graph = "celeba_simple"
    has_ground_truth = False

    def __init__(
        self,
        root: str = "data",
        split: str = "train",
        folder: str = "celeba",
        size: int = 64,
        crop: int | None = 150,
        attributes: Sequence[str] | None = None,
        graph: Mapping[str, Any] | None = None,
        verify_md5: bool = False,
    ) -> None:
        super().__init__(root, split)
        self.dir = Path(root) / folder
        self.size = int(whole_option("celeba", "size", size, minimum=8))
        self.crop = whole_option("celeba", "crop", crop or None, minimum=1, optional=True)
        if verify_md5:
            self._verify_md5()
        table = read_attributes(self.dir / ATTRIBUTE_FILE)
        for name, source in DERIVED.items():
            if source in table.columns and name not in table.columns:
                table[name] = (1 - table[source]).astype(np.int8)
        if graph is not None:
            attributes = self._graph_attributes(graph)
        self.attribute_names = list(table.columns if attributes is None else attributes)
        unknown = [a for a in self.attribute_names if a not in table.columns]
        if unknown:
            raise KeyError(
                f"celeba: unknown attributes {unknown}; {self.dir / ATTRIBUTE_FILE} has {list(table.columns)}"
            )
        partition = read_partition(self.dir / PARTITION_FILE)
        files = partition.index[partition.to_numpy() == SPLIT_CODES[split]]
        missing = files.difference(table.index)
        if len(missing):
            raise CelebAFormatError(
                f"{self.dir / PARTITION_FILE} lists {missing[0]!r}, which {self.dir / ATTRIBUTE_FILE} does not have"
            )
        self.image_dir = self.dir / IMAGE_DIR
        if not self.image_dir.is_dir():
            raise MissingFileError(f"missing image folder {self.image_dir} (expected {IMAGE_DIR}/<file>.jpg)")
        present = {e.name for e in os.scandir(self.image_dir)}
        absent = [f for f in files if f not in present]
        if absent:
            raise MissingFileError(
                f"missing image {self.image_dir / absent[0]}: {len(absent):,} of the {len(files):,} {split} images "
                f"listed in {self.dir / PARTITION_FILE} are not in {self.image_dir} (a partial release?)"
            )
        self.files = list(files)
        rows = table.loc[files, self.attribute_names].to_numpy(np.float32)
        self.attributes = {a: torch.from_numpy(rows[:, j].copy()) for j, a in enumerate(self.attribute_names)}

    def _graph_attributes(self, spec: Mapping[str, Any]) -> list[str]:
        g = CausalGraph.from_dict(spec)
        names = []
        for node, kind in g.kinds.items():
            if kind.is_image:
                if node != "image" or tuple(kind.shape) != (3, self.size, self.size):
                    raise ValueError(
                        f"celeba: graph {g.name!r} image node {node!r} {list(kind.shape)} must be "
                        f"'image' with shape [3, {self.size}, {self.size}] (set the dataset option size)"
                    )
            elif kind.name != "binary":
                raise ValueError(f"celeba: graph {g.name!r} node {node!r} is {kind}; CelebA attributes are binary")
            else:
                names.append(node)
        return names

    def _verify_md5(self) -> None:
        for _, md5, name in CelebA.file_list:
            if name in (ATTRIBUTE_FILE, PARTITION_FILE) and not check_integrity(str(self.dir / name), md5):
                raise CelebAFormatError(f"{self.dir / name} is missing or differs from the official release (md5)")

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, i: int) -> Tensor:
        """Image i as a (3, size, size) float tensor in [-1, 1]."""
        path = self.image_dir / self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except FileNotFoundError:
            raise MissingFileError(f"missing image {path} (listed in {self.dir / PARTITION_FILE})") from None
        except UnidentifiedImageError:
            raise CelebAFormatError(f"{path} is not a readable image (expected a JPEG)") from None
        if self.crop is not None:
            if min(im.size) < self.crop:
                raise CelebAFormatError(f"{path} is {im.size[0]}x{im.size[1]}, smaller than crop={self.crop}")
            im = TF.center_crop(im, [self.crop, self.crop])
        im = TF.resize(im, [self.size, self.size], antialias=True)
        return TF.pil_to_tensor(im).float() / 127.5 - 1

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {a: v[i].reshape(1) for a, v in self.attributes.items()}
        item["image"] = self.load_image(i)
        item["_index"] = torch.tensor(i)
        return item
