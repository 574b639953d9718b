"""Anti-causal predictors: read each attribute back off an image (regressors / classifiers).

One small conv network per image node with one head per attribute, trained with Lightning on the factual
training images and cached per dataset (`imcf.evaluators.cache`). Continuous targets are standardised with the
training statistics and read back in original units (no squashing). The conv body uses BatchNorm (a per-image
norm such as GroupNorm would normalise away the global brightness an intensity head needs), and a grey-level
path beside it hands the heads the brightness of each image's bright pixels (`grey_levels`). Each predictor is
scored on the real test images; a predictor that is poor there makes its effectiveness numbers meaningless, and
the report says so. Its penultimate features are the domain features for realism (FID/KID) and the
feature-space composition distance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from imcf.data.base import stack_batch
from imcf.data.datamodule import build_dataset
from imcf.evaluators.cache import fit_from_config, load_or_fit, model_spec, seeded, subset
from imcf.graph import NodeKind
from imcf.nn.parents import ParentEncoder
from imcf.scores import absolute_error, correct, f1_score, labels


class AttributePredictor(nn.Module):
    """Image (B, C, H, W) in [-1, 1] -> every target attribute, in batch format.

    `targets` maps attribute -> kind string ("continuous", "binary", "categorical(10)").
    `inputs` maps attribute -> other attributes its head also sees (the benchmark's thickness regressor
    also sees intensity). Continuous outputs are in original units, binary a probability (B, 1),
    categorical class probabilities (B, K). In training mode `loss` shifts each image by up to `shift` pixels
    (edges replicated); `grey_quantiles` is how many quantiles of the bright pixels the grey-level path reads;
    `label_smoothing` is the categorical heads' (on embedded Morpho-MNIST 0.1 reads 0.7 points more digits right).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        targets: Mapping[str, str],
        inputs: Mapping[str, Sequence[str]] | None = None,
        width: int = 32,
        image_node: str = "image",
        shift: int = 1,
        grey_quantiles: int = 9,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in image_shape)
        self.image_node = image_node
        self.config = {
            "image_shape": [c, h, w],
            "targets": dict(targets),
            "inputs": {},
            "width": width,
            "image_node": image_node,
            "shift": shift,
            "grey_quantiles": grey_quantiles,
            "label_smoothing": label_smoothing,
        }
        self.kinds = {t: NodeKind.parse(k, t) for t, k in targets.items()}
        bad = [t for t, k in self.kinds.items() if k.name not in ("continuous", "binary", "categorical")]
        if bad:
            raise ValueError(f"predictor targets must be attributes, got {[(t, str(self.kinds[t])) for t in bad]}")
        inputs = {t: list(v) for t, v in (inputs or {}).items() if v}
        for t, extra in inputs.items():
            unknown = [x for x in [t, *extra] if x not in self.kinds]
            if unknown:
                raise KeyError(f"predictor inputs {t!r}: {extra} names non-target attribute(s) {unknown}")
        self.config["inputs"] = inputs
        layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1), nn.GELU()]
        ch, side = width, min(h, w)
        while side > 4:  # halve the resolution down to 4x4, doubling the width up to 4 x width
            nxt = min(2 * ch, 4 * width)
            layers += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1), nn.BatchNorm2d(nxt), nn.GELU()]
            ch, side = nxt, side // 2
        layers += [nn.Conv2d(ch, ch, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.shift, self.grey_quantiles = int(shift), int(grey_quantiles)
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"predictor label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        grey = c * (self.grey_quantiles + 2)
        self.grey = nn.Sequential(nn.Linear(grey, width), nn.GELU(), nn.Linear(width, width), nn.GELU())
        self.num_features = ch + grey + width
        self.encoders = nn.ModuleDict(
            {t: ParentEncoder({x: self.kinds[x] for x in extra}) for t, extra in inputs.items()}
        )
        self.heads = nn.ModuleDict()
        for t, kind in self.kinds.items():
            extra = self.encoders[t].dim if t in self.encoders else 0
            out = int(kind.num_classes) if kind.name == "categorical" else 1
            n = self.num_features
            self.heads[t] = nn.Sequential(nn.Linear(n + extra, n), nn.GELU(), nn.Linear(n, out))
        self.register_buffer("target_mean", torch.zeros(len(self.kinds)))
        self.register_buffer("target_std", torch.ones(len(self.kinds)))
        self._index = {t: i for i, t in enumerate(self.kinds)}

    def set_target_stats(self, values: Mapping[str, Tensor]) -> None:
        """Standardise continuous targets with these (training) values."""
        for t, v in values.items():
            i = self._index[t]
            self.target_mean[i] = v.float().mean()
            self.target_std[i] = v.float().std().clamp(min=1e-6)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features (B, num_features): the domain embedding for realism and composition
        (conv features, the grey levels and their embedding)."""
        images = images.float()
        grey = grey_levels(images, self.grey_quantiles)
        return torch.cat([self.body(images), grey, self.grey(grey)], 1)

    def _logits(self, feats: Tensor, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for t, head in self.heads.items():
            h = feats
            if t in self.encoders:
                h = torch.cat([feats, self.encoders[t]({x: values[x] for x in self.config["inputs"][t]})], 1)
            out[t] = head(h)
        return out

    def forward(self, images: Tensor, values: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Read every target off `images`; `values` supplies the extra inputs some heads take."""
        raw = self._logits(self.features(images), values or {})
        out = {}
        for t, z in raw.items():
            kind, i = self.kinds[t], self._index[t]
            if kind.name == "continuous":
                out[t] = z * self.target_std[i] + self.target_mean[i]
            elif kind.name == "binary":
                out[t] = torch.sigmoid(z)
            else:
                out[t] = torch.softmax(z, 1)
        return out

    def training_targets(self, images: Tensor, values: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Outputs in the form a training loss wants: continuous in original units, binary and categorical as
        logits. This is the callable counterfactual fine-tuning takes
        (`imcf.training.finetune.CounterfactualObjective.set_predictors`)."""
        raw = self._logits(self.features(images), values or {})
        for t, z in raw.items():
            if self.kinds[t].name == "continuous":
                i = self._index[t]
                raw[t] = z * self.target_std[i] + self.target_mean[i]
        return raw

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Sum of per-attribute losses: MSE on standardised values, binary cross-entropy, categorical
        cross-entropy with `label_smoothing`."""
        image = batch[self.image_node]
        if self.training and self.shift:
            image = random_shift(image, self.shift)
        raw = self._logits(self.features(image), batch)
        terms = {}
        for t, z in raw.items():
            kind, i, y = self.kinds[t], self._index[t], batch[t].float()
            if kind.name == "continuous":
                terms[t] = F.mse_loss(z, (y - self.target_mean[i]) / self.target_std[i])
            elif kind.name == "binary":
                terms[t] = F.binary_cross_entropy_with_logits(z, y)
            else:
                terms[t] = F.cross_entropy(z, y.argmax(1), label_smoothing=self.label_smoothing)
        terms["loss"] = sum(terms.values())
        return terms


def grey_levels(images: Tensor, quantiles: int) -> Tensor:
    """Per channel: `quantiles` evenly spaced quantiles (0 to 1) of the bright pixels (those at or above half
    the image's range), their share of the image and the maximum, in [0, 1]: (B, C * (quantiles + 2)).

    A global brightness summary that a conv body with average pooling reads poorly; differentiable (the
    quantiles interpolate between sorted pixel values), so fine-tuning gradients reach the pixels that set them.
    """
    v = (images.flatten(2) + 1) / 2
    s = v.sort(2).values
    lo, hi = s[..., :1], s[..., -1:]
    bright = (v >= lo + (hi - lo) / 2).sum(2, keepdim=True)  # at least the maximum itself
    n = s.shape[2]
    pos = (n - bright) + torch.linspace(0, 1, quantiles, device=v.device) * (bright - 1)
    below = pos.floor().long()
    frac = pos - below
    values = s.gather(2, below) * (1 - frac) + s.gather(2, (below + 1).clamp(max=n - 1)) * frac
    return torch.cat([values, bright / n, hi], 2).flatten(1)


def random_shift(images: Tensor, pixels: int) -> Tensor:
    """Translate each image by its own random offset of up to `pixels` in each direction, replicating edges."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pixels,) * 4, mode="replicate")
    dy, dx = (torch.randint(0, 2 * pixels + 1, (b, 1), device=images.device) for _ in range(2))
    rows = (dy + torch.arange(h, device=images.device))[:, :, None]  # (B, H, 1)
    cols = (dx + torch.arange(w, device=images.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # advanced indices first: (B, H, W, C)


class FrozenPredictor:
    """A trained AttributePredictor as the joint predictor of counterfactual fine-tuning:
    (images, parents) -> {attribute: continuous value | logits}, gradients flowing to the images only.

    Not an nn.Module on purpose: held by a mechanism, it stays out of the mechanism's state dict and
    checkpoints; it follows the images to their device on each call.
    """

    def __init__(self, model: AttributePredictor) -> None:
        self.model = model.eval().requires_grad_(False)

    def __call__(self, images: Tensor, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if next(self.model.parameters()).device != images.device:
            self.model.to(images.device)
        return self.model.training_targets(images, values)


@dataclass
class PredictorQuality:
    """How well one predictor reads its attribute off real test images."""

    attribute: str
    kind: str
    n: int
    scores: dict[str, float] = field(default_factory=dict)
    poor: bool = False
    reason: str = ""


def judge(kind: NodeKind, scores: Mapping[str, float], max_nmae: float, min_f1: float, chance: float) -> str:
    """Why a predictor is poor ('' when it is fine): continuous MAE above `max_nmae` x the attribute's std,
    binary F1 (macro F1 for categorical) below `min_f1`, or accuracy no better than always guessing the majority."""
    if kind.name == "continuous":
        if scores["nmae"] > max_nmae:
            return f"MAE is {scores['nmae']:.2f} x the attribute's std (> {max_nmae})"
        return ""
    if scores["f1"] < min_f1:
        return f"F1 {scores['f1']:.3f} < {min_f1}"
    if scores["acc"] <= chance + 1e-9:
        return f"accuracy {scores['acc']:.3f} is no better than the majority class ({chance:.3f})"
    return ""


@torch.no_grad()
def score_predictor(
    model: AttributePredictor,
    dataset: Dataset,
    batch_size: int = 256,
    max_nmae: float = 0.5,
    min_f1: float = 0.7,
    device: torch.device | None = None,
) -> dict[str, PredictorQuality]:
    """Score every head on a dataset of real images: MAE (and MAE / std) or accuracy and F1."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    read: dict[str, list[Tensor]] = {t: [] for t in model.kinds}
    true: dict[str, list[Tensor]] = {t: [] for t in model.kinds}
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=stack_batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(batch[model.image_node], batch)
        for t in model.kinds:
            read[t].append(out[t].cpu())
            true[t].append(batch[t].cpu())
    quality = {}
    for t, kind in model.kinds.items():
        r, y = torch.cat(read[t]), torch.cat(true[t])
        if kind.name == "continuous":
            mae = absolute_error(r, y).mean().item()
            scores = {"mae": mae, "nmae": mae / max(y.float().std().item(), 1e-12)}
            chance = 0.0
        else:
            lr, ly = labels(kind, r), labels(kind, y)
            k = 2 if kind.name == "binary" else int(kind.num_classes)
            chance = torch.bincount(ly, minlength=k).max().item() / max(len(ly), 1)
            scores = {"acc": correct(lr, ly).mean().item(), "f1": f1_score(lr, ly, k), "chance": chance}
        reason = judge(kind, scores, max_nmae, min_f1, chance)
        quality[t] = PredictorQuality(t, str(kind), len(y), scores, bool(reason), reason)
    return quality


def as_dict(quality: Mapping[str, PredictorQuality]) -> dict[str, Any]:
    """Plain-data form of predictor qualities (for JSON and caches)."""
    return {t: {"kind": q.kind, "n": q.n, **q.scores, "poor": q.poor, "reason": q.reason} for t, q in quality.items()}


def from_dict(data: Mapping[str, Any]) -> dict[str, PredictorQuality]:
    """Inverse of `as_dict`."""
    out = {}
    for t, d in data.items():
        scores = {k: float(v) for k, v in d.items() if k not in ("kind", "n", "poor", "reason")}
        out[t] = PredictorQuality(t, d["kind"], int(d["n"]), scores, bool(d["poor"]), str(d["reason"]))
    return out


def load_or_train_predictors(
    dataset: str,
    options: Mapping[str, Any],
    data_root: str,
    image_node: str,
    image_shape: Sequence[int],
    targets: Mapping[str, str],
    cfg: Any,
    accelerator: str = "auto",
    seed: int = 0,
    progress: bool = True,
    fingerprint: Mapping[str, Any] | None = None,
    setting: str = "predictors",
) -> tuple[AttributePredictor, dict[str, PredictorQuality], str]:
    """The cached predictor of `image_node` for this dataset, trained (and scored on the test split) if absent.

    `cfg` is a PredictorConfig (path, inputs, width, max_epochs, batch_size, lr, max_train_samples, poor_*);
    `fingerprint` (`imcf.evaluators.cache.dataset_fingerprint`) ties the cache to the dataset's content;
    `setting` is the config key the messages name for `cfg.path` (`finetune_predictors` when fine-tuning).
    Returns (model in eval mode on CPU, test-set quality, cache file).
    """
    inputs = {t: [x for x in v if x in targets] for t, v in dict(cfg.inputs or {}).items() if t in targets}
    # version 2: BatchNorm body, grey-level path, shifted training images, cosine learning rate; 3: initial weights
    # from the seed (`seeded`)
    spec = model_spec("predictors", 3, dataset, options, fingerprint, image_node, image_shape, cfg, seed,
                      targets=dict(targets), inputs=inputs, label_smoothing=float(cfg.label_smoothing))  # fmt: skip
    model = seeded(seed, lambda: AttributePredictor(
        image_shape, targets, inputs, int(cfg.width), image_node, label_smoothing=float(cfg.label_smoothing)
    ))  # fmt: skip

    def train() -> dict[str, Any]:
        print(f"[imcf] training anti-causal predictors for {dataset}/{image_node} ({list(targets)})")
        train_set = build_dataset(dataset, data_root, "train", **options)
        probe = subset(train_set, 5000, seed)
        cont = [t for t, k in model.kinds.items() if k.name == "continuous"]
        if cont:
            items = [probe[i] for i in range(len(probe))]
            model.set_target_stats({t: torch.stack([it[t] for it in items]) for t in cont})
        val = build_dataset(dataset, data_root, "val", **options)
        fit_from_config(model, train_set, val, cfg, accelerator, seed, progress, cosine=True)
        test = build_dataset(dataset, data_root, "test", **options)
        quality = score_predictor(model, test, max_nmae=float(cfg.poor_nmae), min_f1=float(cfg.poor_f1))
        return {"quality": as_dict(quality)}

    ckpt, path = load_or_fit(setting, spec, model, cfg.path, data_root, train)
    quality = _rejudge(from_dict(ckpt["quality"]), model, cfg)  # the thresholds may differ from when it was cached
    return model.eval(), quality, path


def _rejudge(quality: dict[str, PredictorQuality], model: AttributePredictor, cfg: Any) -> dict[str, PredictorQuality]:
    """Re-apply the current poor-predictor thresholds to cached scores."""
    for t, q in quality.items():
        kind = model.kinds[t]
        chance = q.scores.get("chance", 0.0)
        q.reason = judge(kind, q.scores, float(cfg.poor_nmae), float(cfg.poor_f1), chance)
        q.poor = bool(q.reason)
    return quality
