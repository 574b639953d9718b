"""What the latent-variable image families (VAE, HVAE, and the GAN's encoder) share: the `LatentNoise` they abduct,
the optional pixel residual, parent conditioning, the output gain, the independence penalty and gradient
clipping/skipping. Counterfactual fine-tuning (`counterfactual_finetune`) is configured here and run by
`imcf.training.finetune`. The networks live in the family files (vae.py, hvae.py, gan.py)."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from imcf.graph import KINDS, NodeKind
from imcf.mechanisms.base import Mechanism, check_flag, check_number, check_parent_ranges, check_sizes, is_number
from imcf.nn.conv import check_image_shape
from imcf.nn.critic import LAYOUTS as CRITIC_LAYOUTS
from imcf.nn.critic import ConditionalCritic
from imcf.nn.gain import PowerGain, from_shape, to_shape
from imcf.nn.independence import dependence
from imcf.nn.likelihood import ImageLikelihood
from imcf.nn.parents import ParentEncoder

#: `abduction.residual: relative`: where both decodes are lit (value + 1 > ON) the residual is scaled by
#: (decode' + 1 + eps) / (decode + 1 + eps), clipped to [0, MAX]; elsewhere it is added as abducted
RELATIVE_EPS, RELATIVE_MAX, RELATIVE_ON = 0.1, 4.0, 0.5
#: additive: x' = d' + (x - d); relative: the residual scaled with the brightness; tone: the factual's tone curve
#: (its decoded values mapped, by rank, onto its own pixel values) applied to every decode, x' = T(d') + (x - T(d))
#: transported: the residual moved with the decode, along the displacement that turns d into d' (`transport`)
RESIDUAL_MODES = ("additive", "relative", "tone", "transported")
#: `transport`: gradient floor (squared, image units per pixel), largest displacement (pixels), the window its
#: estimate is averaged over, and the number of estimate-and-warp steps (docs/mechanisms_images.md)
TRANSPORT_EPS, TRANSPORT_MAX, TRANSPORT_POOL, TRANSPORT_STEPS = 0.1, 3.0, 3, 2
#: how `transport` reads the residual between pixels (docs/mechanisms_images.md)
RESAMPLE_MODES = ("bilinear", "bicubic")
#: how the output gain depends on `gain_parents` (`LatentImageMechanism._gain_net`)
GAIN_FORMS = ("mlp", "power", "proportional")


@dataclass
class LatentNoise:
    """Abducted exogenous noise of an image: latent codes (one tensor per level) and a pixel residual.

    `standardised` says the codes are N(0, I) coordinates of the (conditional) prior, mapped to latents
    under whatever parents `predict` gets; otherwise they are the latents themselves, used as they are.
    `residual` is x - decode(latents, factual parents), or None when not kept.
    """

    latents: list[Tensor]
    residual: Tensor | None = None
    standardised: bool = False
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.latents[0].shape[0])


def tone_curve(decoded: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per image and channel, the monotone map that sends the decoded values onto the target's by rank
    (histogram matching): the two sorted value lists, each (B, C, H * W)."""
    return decoded.flatten(2).sort(-1).values, target.flatten(2).sort(-1).values


def apply_tone(x: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """Map every value of x (B, C, H, W) through the piecewise-linear curve source -> target of its image and
    channel (`tone_curve`); values beyond the source's range take the end values."""
    flat = x.flatten(2).contiguous()
    n = source.shape[-1]
    idx = torch.searchsorted(source.contiguous(), flat).clamp(1, n - 1)
    x0, x1 = source.gather(-1, idx - 1), source.gather(-1, idx)
    y0, y1 = target.gather(-1, idx - 1), target.gather(-1, idx)
    w = ((flat - x0) / (x1 - x0).clamp(min=1e-6)).clamp(0.0, 1.0)
    return (y0 + w * (y1 - y0)).reshape(x.shape)


def _warp(x: Tensor, u: Tensor, resample: str = "bilinear") -> Tensor:
    """x read at p - u(p) (u (B, 2, H, W) in pixels, x then y), borders repeated. `bilinear`, or `bicubic`
    limited to the range of the four pixels around the read point (no overshoot: a sharp residual keeps its
    edges but gains no ringing)."""
    _, _, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=x.dtype, device=x.device), torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij"
    )
    px, py = xs - u[:, 0], ys - u[:, 1]
    grid = torch.stack([px * (2 / max(w - 1, 1)) - 1, py * (2 / max(h - 1, 1)) - 1], -1)
    if resample == "bilinear":
        return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    out = nn.functional.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=True)
    padded = nn.functional.pad(x, (0, 1, 0, 1), mode="replicate")
    corner = (py.floor().clamp(0, h - 1) * w + px.floor().clamp(0, w - 1)).long().flatten(1)
    corner = corner.unsqueeze(1).expand(-1, x.shape[1], -1)
    lo = (-nn.functional.max_pool2d(-padded, 2, 1)).flatten(2).gather(2, corner).reshape(x.shape)
    hi = nn.functional.max_pool2d(padded, 2, 1).flatten(2).gather(2, corner).reshape(x.shape)
    return torch.minimum(torch.maximum(out, lo), hi)


def transport(residual: Tensor, before: Tensor, after: Tensor, resample: str = "bilinear") -> Tensor:
    """The residual moved with the decode. The displacement u that turns `before` into `after` is solved to first
    order along the local gradient, after - before = -grad . u, so u = -(after - before) grad / (|grad|^2 + eps),
    averaged over a TRANSPORT_POOL window, capped at TRANSPORT_MAX pixels, and refined TRANSPORT_STEPS times
    against `before` warped by the estimate so far; the residual is then read at p - u (`resample`: `_warp`).
    Where the decode is flat (no gradient) or does not change, the residual stays where it was."""
    u = torch.zeros(before.shape[0], 2, *before.shape[2:], dtype=before.dtype, device=before.device)
    for step in range(TRANSPORT_STEPS):
        moved = _warp(before, u) if step else before
        ref = nn.functional.pad(moved.mean(1, keepdim=True), (1, 1, 1, 1), mode="replicate")
        gx = (ref[..., 1:-1, 2:] - ref[..., 1:-1, :-2]) / 2
        gy = (ref[..., 2:, 1:-1] - ref[..., :-2, 1:-1]) / 2
        scale = -(after - moved).mean(1, keepdim=True) / (gx * gx + gy * gy + TRANSPORT_EPS)
        du = torch.cat([scale * gx, scale * gy], 1)
        u = u + nn.functional.avg_pool2d(du, TRANSPORT_POOL, 1, TRANSPORT_POOL // 2, count_include_pad=False)
        u = u * (TRANSPORT_MAX / u.norm(dim=1, keepdim=True).clamp(min=TRANSPORT_MAX))
    return _warp(residual, u, resample)


def warmup_weight(weight: float, warmup: int, steps: Tensor | int, start: int = 0) -> float:
    """A term's weight after `steps` training steps under a warm-up of `warmup` steps that begins after `start`:
    0 before `start` and for the warm-up's first half, rising linearly to `weight` at `start` + `warmup` (no
    warm-up: `weight` from `start` on)."""
    steps = int(steps) - int(start)
    if steps < 0:
        return 0.0
    weight, n = float(weight), int(warmup)
    if n <= 0:
        return weight
    return weight * min(1.0, max(0.0, (steps - n / 2) / (n / 2)))


LatentScales = float | tuple[float, ...] | dict[str, float | tuple[float, ...]]


def _scales(value: Any, what: str, alternative: str) -> float | tuple[float, ...]:
    """One latent scale in [0, 1] or a non-empty list of them (one per latent level); otherwise an error naming
    `what` and the value."""
    many = isinstance(value, Sequence) and not isinstance(value, str)
    items = list(value) if many else [value]
    if not items or not all(is_number(v) and 0.0 <= v <= 1.0 for v in items):
        raise ValueError(
            f"{what} must be a number in [0, 1] or a non-empty list of them (one per latent level)"
            f"{', ' + alternative if alternative else ''}, got {value!r}"
        )
    return tuple(float(v) for v in items) if many else float(items[0])


def parse_options(given: Mapping[str, Any] | None, defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Defaults updated by `given`; unknown keys raise an error naming them, and so does a `given` that is not a
    mapping (`abduction: abc`)."""
    if given is not None and not isinstance(given, Mapping):
        raise ValueError(f"{what} must be a mapping of options (known: {sorted(defaults)}), got {given!r}")
    given = dict(given or {})
    unknown = set(given) - set(defaults)
    if unknown:
        raise KeyError(f"{what}: unknown key(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **given}


class LatentImageMechanism(Mechanism):
    """Base of the latent-variable image families: x = decode(latents, parents) (+ residual).

    Subclasses implement `encode_latents`, `decode_loc`, `noise_shapes` and `loss` (`ELBOImageMechanism`: `elbo`
    and `decode_dist` in place of `decode_loc`).
    Config shared by all such families:
      abduction: {keep_residual: true, sample: false, latents: fixed|exogenous}
        keep_residual: store x - decode(z, pa) so a null intervention returns x exactly (exact_abduction);
        sample: abduct a posterior sample instead of the posterior mean;
        latents: "fixed" keeps the abducted latents under new parents (default); "exogenous" abducts the
          standardised coordinates of the conditional prior, re-mapped under the new parents;
        residual: additive | relative | tone | transported, how the residual meets a new decode (RESIDUAL_MODES);
        resample: bilinear | bicubic, how `transported` reads the residual between pixels (`_warp`);
        fit: {steps, rate, prior, withheld}, the encoder's latents fitted to the image by `steps` Adam steps under
          the model's likelihood (`_fit_latents`; families with one; answering only, skipped in training mode),
          run by `predict` on the rows whose answer it can change (`_fit_answering_rows`); withheld: false
          answers rows whose withheld parents change from the encoder's latents.
      independence_warmup: N training steps: the penalty is off for the first N / 2 and rises linearly to its
        weight at N (from the first step it can stall the ELBO before the latent carries anything);
      independence_weight: weight of the normalised HSIC between the abducted latent and each parent
        (`imcf.nn.independence`) added to the training loss: keeps the parents' information out of the
        noise, so the decoder takes it from the parents (0 = off); one number for every parent, or a mapping
        from parents or parent kinds (continuous, binary, categorical; gain parents are not in a kind) to
        weights that penalises only the parents it covers (e.g. {continuous: 1.0}: the stroke width out of the
        latent, the digit's style left to it);
      gain_parents: parents that act only as an output gain, x = g(gain parents) * (s + 1) - 1, the networks
        modelling the shape s from the latents and the other parents (e.g. a stroke brightness); the residual is
        kept in shape units, so changing only a gain parent rescales the image exactly;
      gain_form: mlp (a small network of the gain parents) | power (g = exp(b) * prod (v / ref) ** a, learned a
        and b per parent and channel, continuous positive parents) | proportional (g = prod v / ref, fixed: a
        brightness that scales every pixel, exactly; the likelihood cannot tell a gain that bends from a shape
        that follows a correlated shape parent, so the learned forms drift off it);
      likelihood ("discretized_gaussian" | "gaussian" | "laplace"), likelihood_std (null = learned) where the family
      has one,
      parent_ranges ({parent: [lo, hi]} fixed normalisation for continuous parents),
      grad_clip (max grad norm), grad_skip (skip updates whose grad norm exceeds it; null = never).
    """

    models_gain = True  # takes `gain_parents` (the GAN, trained adversarially, does not)
    retired_state = ("lagrange_raw", "elbo_bound")  # fine-tuning state, kept by imcf.training.finetune since 12-2026
    inference_options = ("abduction",)
    #: the latents' prior is N(0, I) whatever the parents (VAE, GAN): 0 is its mean even for "fixed" latents
    latents_centred = True
    #: the family scores images under a likelihood (`image_log_likelihood`), which `abduction.fit` needs
    has_likelihood = False
    abduction_assumption = (
        "approximate abduction: an encoder's latent code (plus an optional pixel residual) stands in for the true"
        " noise; the counterfactual assumes the code is independent of the parents"
    )

    def __init__(
        self,
        node: str,
        kind: NodeKind,
        parent_kinds: Mapping[str, NodeKind],
        abduction: Mapping[str, Any] | None = None,
        parent_ranges: Mapping[str, list[float]] | None = None,
        grad_clip: float | None = 200.0,
        grad_skip: float | None = None,
        independence_weight: float | Mapping[str, float] = 0.0,
        independence_warmup: int = 0,
        gain_parents: Sequence[str] | None = None,
        gain_form: str = "mlp",
    ) -> None:
        super().__init__(node, kind, parent_kinds)
        if kind.name != "image":
            raise ValueError(f"{type(self).__name__} needs an image node; {node!r} is {kind}")
        self.channels, self.size, _ = check_image_shape(kind.shape, node)
        family = self.family_name()
        opts = parse_options(
            abduction,
            {
                "keep_residual": True,
                "sample": False,
                "latents": "fixed",
                "withhold_residual_on": "discrete",
                "residual": "additive",
                "withheld_latent_scale": 1.0,
                "withheld_residual_tolerance": None,
                "resample": "bilinear",
                "refine": None,
                "fit": None,
            },
            f"{node}: abduction",
        )
        if opts["latents"] not in ("fixed", "exogenous"):
            raise ValueError(f"{node}: abduction.latents must be fixed or exogenous, got {opts['latents']!r}")
        self.keep_residual = check_flag(family, node, "abduction.keep_residual", opts["keep_residual"])
        if opts["residual"] not in RESIDUAL_MODES:
            raise ValueError(f"{node}: abduction.residual must be one of {RESIDUAL_MODES}, got {opts['residual']!r}")
        self.residual_mode = opts["residual"]
        if opts["resample"] not in RESAMPLE_MODES:
            raise ValueError(f"{node}: abduction.resample must be one of {RESAMPLE_MODES}, got {opts['resample']!r}")
        self.resample = opts["resample"]
        self.abduct_sample = check_flag(family, node, "abduction.sample", opts["sample"])
        self.latent_mode = opts["latents"]
        self.withhold_residual_on = self._withheld_parents(opts["withhold_residual_on"], parent_kinds, node)
        self.withheld_latent_scale = self._latent_scales(opts["withheld_latent_scale"], node, self.withhold_residual_on)
        # every latent-scale option, checked against the latents once the family has built them
        self._scale_options: list[tuple[str, LatentScales]] = [
            ("abduction.withheld_latent_scale", self.withheld_latent_scale)
        ]
        tol = opts["withheld_residual_tolerance"]
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, int | float) or not tol > 0):
            raise ValueError(f"{node}: abduction.withheld_residual_tolerance must be null or > 0, got {tol!r}")
        self.withheld_residual_tolerance = None if tol is None else float(tol)
        self.refine = parse_options(
            opts["refine"], {"steps": 0, "rate": 1.0, "proximity": 1.0}, f"{node}: abduction.refine"
        )
        check_sizes(family, node, 0, **{"abduction.refine.steps": self.refine["steps"]})
        check_number(family, node, "abduction.refine.rate", self.refine["rate"], 0.0, above=True)
        check_number(family, node, "abduction.refine.proximity", self.refine["proximity"], 0.0)
        if self.refine["rate"] * self.refine["proximity"] >= 2:  # gradient descent on the quadratic term diverges
            raise ValueError(
                f"{family} {node!r}: abduction.refine.rate * abduction.refine.proximity must be < 2 (each step would "
                f"overshoot the abducted latents), got {self.refine['rate']!r} * {self.refine['proximity']!r}"
            )
        self.fit = parse_options(
            opts["fit"], {"steps": 0, "rate": 0.05, "prior": 1.0, "withheld": False}, f"{node}: abduction.fit"
        )
        check_sizes(family, node, 0, **{"abduction.fit.steps": self.fit["steps"]})
        check_flag(family, node, "abduction.fit.withheld", self.fit["withheld"])
        check_number(family, node, "abduction.fit.rate", self.fit["rate"], 0.0, above=True)
        check_number(family, node, "abduction.fit.prior", self.fit["prior"], 0.0)
        if self.fit["steps"] and not self.has_likelihood:
            raise self.no_likelihood_error()
        if self.fit["steps"] and self.latent_mode != "exogenous" and not self.latents_centred:
            raise ValueError(
                f"{family} {node!r}: abduction.fit.steps > 0 needs latents whose prior is N(0, I): "
                "abduction.latents: exogenous for this family's parent-conditioned prior"
            )
        check_sizes(family, node, 0, independence_warmup=independence_warmup)
        check_number(family, node, "grad_clip", grad_clip, 0.0, above=True, null=True)
        check_number(family, node, "grad_skip", grad_skip, 0.0, above=True, null=True)
        self.gain_parents = self._gain_parents(gain_parents, parent_kinds, node)
        self.independence_weights = self._independence_weights(
            independence_weight, parent_kinds, self.gain_parents, family, node
        )
        #: the largest parent's weight: the penalty is on when it is > 0 (the warm-up ramps every parent alike)
        self.independence_weight = max(self.independence_weights.values(), default=0.0)
        self.independence_warmup = int(independence_warmup)
        if self.independence_warmup > 0 and self.independence_weight > 0:  # steps seen, checkpointed: a resumed run
            # continues the warm-up (none where no parent is penalised: the faces' checkpoints keep their keys)
            self.register_buffer("independence_steps", torch.zeros((), dtype=torch.long))
        # honest: only the residual makes predict(abduct(x, pa), pa) == x
        self.exact_abduction = self.keep_residual
        self.grad_clip = grad_clip
        self.grad_skip = grad_skip
        ranges = check_parent_ranges(family, node, parent_kinds, parent_ranges)
        shape_kinds = {p: k for p, k in parent_kinds.items() if p not in self.gain_parents}
        self.shape_parents = tuple(shape_kinds)
        # the networks see the shape parents; the gain parents act only through the output gain
        self.parent_encoder = (
            ParentEncoder(shape_kinds, {p: r for p, r in ranges.items() if p in shape_kinds}) if shape_kinds else None
        )
        self.cond_features = self.parent_encoder.dim if self.parent_encoder is not None else 0
        self.gain_encoder, self.gain_net = None, None
        if self.gain_parents:
            gain_kinds = {p: parent_kinds[p] for p in self.gain_parents}
            self.gain_encoder = ParentEncoder(gain_kinds, {p: r for p, r in ranges.items() if p in gain_kinds})
            self.gain_net = self._gain_net(gain_form, gain_kinds, node)
        elif gain_form not in GAIN_FORMS:
            raise ValueError(f"{node}: gain_form must be one of {GAIN_FORMS}, got {gain_form!r}")
        self.gain_form = gain_form

    def _gain_net(self, form: Any, gain_kinds: Mapping[str, NodeKind], node: str) -> nn.Module:
        """The output gain's model: a small network of the encoded gain parents (`mlp`, starts at gain 1), a
        learned power law of their values (`power`, starts proportional) or a fixed proportional gain
        (`proportional`); the last two take continuous parents only."""
        if form not in GAIN_FORMS:
            raise ValueError(f"{node}: gain_form must be one of {GAIN_FORMS}, got {form!r}")
        if form in ("power", "proportional"):
            bad = [p for p, k in gain_kinds.items() if k.name != "continuous"]
            if bad:
                raise ValueError(f"{node}: gain_form {form} needs continuous gain_parents; {bad} are not")
            return PowerGain(list(gain_kinds), self.channels, node, learned=form == "power")
        assert self.gain_encoder is not None
        net = nn.Sequential(nn.Linear(self.gain_encoder.dim, 32), nn.SiLU(), nn.Linear(32, self.channels))
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
        return net

    def current_independence_weight(self) -> float:
        """The independence penalty's weight at this training step (`independence_warmup`)."""
        steps = getattr(self, "independence_steps", 0)  # the buffer exists only under a penalty's warm-up
        return warmup_weight(self.independence_weight, self.independence_warmup, steps)

    def independence_penalty(
        self, codes: Tensor | list[Tensor] | None, parents: Mapping[str, Tensor], batch_size: int
    ) -> tuple[Tensor | float, dict[str, Tensor]]:
        """The current weight times sum_p nHSIC(codes, parent p), and the `dep_<parent>` terms to log; (0, {})
        when the penalty is off, there are no codes or the batch is under 4. Advances the warm-up when training.

        Out of training (validation) the weight is the full one, warm-up or not: the validation loss, which picks
        the unit's best epoch, then scores every epoch by the objective the run ends on. With the ramped weight an
        epoch before the warm-up (its latent still holding the digit: do(digit) about 0.1) scored below every
        later one by 0.0002 nats/dim in the seed-1 default run, and would have been the unit's result."""
        if self.independence_weight <= 0 or codes is None or batch_size < 4:
            return 0.0, {}
        named = {p: w for p, w in self.independence_weights.items() if w > 0}  # some, as the weight is > 0
        dep = dependence(codes, {p: parents[p] for p in named})
        ramp = self.current_independence_weight() / self.independence_weight if self.training else 1.0
        penalty = ramp * sum(named[p] * d for p, d in dep.items())
        if self.training and self.independence_warmup > 0:
            self.independence_steps += 1
        return penalty, {f"dep_{p}": v.detach() for p, v in dep.items()}

    @staticmethod
    def _independence_weights(
        value: Any, parent_kinds: Mapping[str, NodeKind], gain_parents: Sequence[str], family: str, node: str
    ) -> dict[str, float]:
        """`independence_weight` as {parent: weight}: one number >= 0 for every parent, or a mapping whose keys are
        parents or parent kinds (continuous, binary, categorical; a kind covers the parents of that kind that are
        not named and not gain parents, whose value the gain sets whatever the latent holds); parents left out
        weigh 0. An error names the node, the key and the parents."""
        if not isinstance(value, Mapping):
            check_number(family, node, "independence_weight", value, 0.0)
            return {p: float(value) for p in parent_kinds}
        kinds = tuple(k for k in KINDS if k != "image")  # the kinds a parent of an image can have
        unknown = [k for k in value if k not in parent_kinds and k not in kinds]
        if unknown:
            raise ValueError(f"{family} {node!r}: independence_weight names {unknown}, which are neither parents of "
                             f"{node!r} (parents: {sorted(parent_kinds)}) nor parent kinds {list(kinds)}")  # fmt: skip
        for key, w in value.items():
            check_number(family, node, f"independence_weight.{key}", w, 0.0)
        weights = {}
        for p, kind in parent_kinds.items():
            by_kind = value.get(kind.name, 0.0) if p not in gain_parents else 0.0
            weights[p] = float(value.get(p, by_kind))
        return weights

    @staticmethod
    def _latent_scales(
        value: Any, node: str, withheld: Sequence[str], key: str = "abduction.withheld_latent_scale"
    ) -> LatentScales:
        """`abduction.withheld_latent_scale` (or another option `key` of its form): one number in [0, 1] for every
        latent, or a list of them, one per latent tensor in `noise_shapes` order (an HVAE's levels, coarsest
        first); or a mapping from withheld parents to such a number or list, each parent's scales applied to the
        rows where that parent changes (a withheld parent it does not name keeps its latents: scale 1)."""
        what = f"{node}: {key}"
        if not isinstance(value, Mapping):
            return _scales(value, what, "or a mapping from withheld parents to either")
        unknown = [p for p in value if p not in withheld]
        if unknown:
            raise KeyError(
                f"{what} names {unknown}, which are not withheld parents (withhold_residual_on: {list(withheld)})"
            )
        return {str(p): _scales(v, f"{what}[{p}]", "") for p, v in value.items()}

    def latent_scales(self, parent: str | None = None, scales: LatentScales | None = None) -> tuple[float, ...]:
        """`withheld_latent_scale` (or `scales` of its form) as one scale per latent tensor (`noise_shapes` order):
        with a scale per parent, that of `parent` (1 where the mapping does not name it)."""
        scales = self.withheld_latent_scale if scales is None else scales
        if isinstance(scales, dict):
            scales = scales.get(parent, 1.0) if parent is not None else 1.0
        return scales if isinstance(scales, tuple) else (scales,) * len(self.noise_shapes())

    def check_latent_scales(self) -> None:
        """Called by each family once its latents are built: a list of `withheld_latent_scale`s (each parent's, where
        they are given per parent; the same for `adversarial.latent_scale`) needs one scale per latent tensor
        (`noise_shapes`)."""
        shapes = self.noise_shapes()
        for key, given in self._scale_options:
            for parent in given if isinstance(given, dict) else (None,):
                scales = self.latent_scales(parent, given)
                if len(scales) != len(shapes):
                    of = f" for {parent!r}" if parent is not None else ""
                    raise ValueError(
                        f"{self.node}: {key} lists {len(scales)} scales{of} but the mechanism "
                        f"has {len(shapes)} latent tensors (shapes {[list(s) for s in shapes]}, coarsest first)"
                    )

    @property
    def shrinks_withheld(self) -> bool:
        """Whether rows whose withheld parents change get any latent scaled (`withheld_latent_scale` below 1)."""
        return self._shrinks(None)

    def _shrinks(self, scales: LatentScales | None) -> bool:
        """Whether `scales` (None: `withheld_latent_scale`) scale any latent of a withheld parent's rows."""
        return any(v != 1.0 for p in self.withhold_residual_on for v in self.latent_scales(p, scales))

    @staticmethod
    def _withheld_parents(spec: Any, parent_kinds: Mapping[str, NodeKind], node: str) -> tuple[str, ...]:
        if spec == "discrete":
            return tuple(p for p, k in parent_kinds.items() if k.name in ("binary", "categorical"))
        if spec is None:
            return ()
        if isinstance(spec, str) or not all(isinstance(p, str) for p in spec):
            raise ValueError(
                f"{node}: abduction.withhold_residual_on must be 'discrete' or a list of parents, got {spec!r}"
            )
        unknown = [p for p in spec if p not in parent_kinds]
        if unknown:
            raise KeyError(f"{node}: abduction.withhold_residual_on names non-parents {unknown}")
        return tuple(spec)

    @staticmethod
    def _gain_parents(spec: Any, parent_kinds: Mapping[str, NodeKind], node: str) -> tuple[str, ...]:
        if spec is None:
            return ()
        if isinstance(spec, str) or not all(isinstance(p, str) for p in spec):
            raise ValueError(f"{node}: gain_parents must be a list of parent names, got {spec!r}")
        unknown = [p for p in spec if p not in parent_kinds]
        if unknown:
            raise KeyError(f"{node}: gain_parents names non-parents {unknown}; parents: {sorted(parent_kinds)}")
        return tuple(spec)

    # ----- what families implement -----
    @abstractmethod
    def encode_latents(self, x: Tensor, cond: Tensor) -> LatentNoise:
        """Posterior latents (mean, or a sample when `self.abduct_sample`) in the configured mode."""

    @abstractmethod
    def decode_loc(self, noise: LatentNoise, cond: Tensor) -> Tensor:
        """Latents (without residual) and parent features -> likelihood location (B, C, H, W)."""

    @abstractmethod
    def noise_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shapes of the latent tensors."""

    # ----- the contract -----
    def condition(self, parents: Mapping[str, Tensor], batch_size: int, update: bool = True) -> Tensor:
        """Parents -> (B, D) normalised features of the shape parents (all but `gain_parents`; (B, 0) if none);
        `update=False` leaves the encoder's running statistics as they are (in training, too)."""
        missing = [p for p in self.parents if p not in parents]
        if missing:
            raise KeyError(f"mechanism of {self.node!r} needs parents {missing}; got {sorted(parents)}")
        for p in self.parents:
            if tuple(parents[p].shape[1:]) != self.parent_kinds[p].tensor_shape:
                raise ValueError(
                    f"parent {p!r} of {self.node!r} has shape {tuple(parents[p].shape)}, "
                    f"expected (B, {self.parent_kinds[p].tensor_shape})"
                )
        if self.parent_encoder is None:
            return torch.zeros(batch_size, 0, device=self.device)
        features = self.parent_encoder({p: parents[p] for p in self.shape_parents}, update=update)
        return features.to(self._device_anchor.dtype)

    def gain(self, parents: Mapping[str, Tensor]) -> Tensor | None:
        """The output gain g(gain parents) > 0 as (B, C, 1, 1), or None without `gain_parents`.

        The image is x = g * (s + 1) - 1 with s the shape decoded from the latents and the other parents:
        a gain parent scales the image's brightness and nothing else."""
        if self.gain_encoder is None or self.gain_net is None:
            return None
        feats = self.gain_encoder({p: parents[p] for p in self.gain_parents}).to(self._device_anchor.dtype)
        if isinstance(self.gain_net, PowerGain):  # relative to the parent's range end, else its running mean
            enc = self.gain_encoder
            values = torch.cat([parents[p].reshape(-1, 1) for p in self.gain_parents], 1).to(feats.dtype)
            return self.gain_net(values, torch.where(enc.fixed, enc.hi, enc.mean).to(feats.dtype))
        return self.gain_net(feats).exp()[:, :, None, None]

    to_shape = staticmethod(to_shape)
    from_shape = staticmethod(from_shape)

    def _check_image(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != (self.channels, self.size, self.size):
            raise ValueError(
                f"{self.node!r} expects images (B, {self.channels}, {self.size}, {self.size}), got {tuple(x.shape)}"
            )

    def abduct(self, x: Tensor, parents: Mapping[str, Tensor]) -> LatentNoise:
        noise = self._abduct(x, parents, fit=False)
        if self.fit["steps"] and not self.training:  # fitted where it can change the answer: `_fit_answering_rows`
            noise.extras["fit_image"] = x
        return noise

    def _abduct(self, x: Tensor, parents: Mapping[str, Tensor], fit: bool) -> LatentNoise:
        """The encoder's latents (fitted to `x` by `_fit_latents` if `fit`) and the residual against their decode."""
        self._check_image(x)
        cond = self.condition(parents, x.shape[0])
        gain = self.gain(parents)
        shape = self.to_shape(x, gain)
        noise = self.encode_latents(shape, cond)
        if fit:
            noise = self._fit_latents(noise, x, cond, gain)
        noise.extras["parents"] = {p: parents[p] for p in self.parents}  # the factual ones, for what predict compares
        if self.keep_residual:
            decoded = self._decode_shape(noise, cond, gain is not None)
            if self.residual_mode == "tone":  # the decoder's blur undone by the factual's own grey levels
                noise.extras["tone"] = tone = tone_curve(decoded, shape)
                decoded = apply_tone(decoded, *tone)
            # in shape units: changing only a gain parent rescales the image exactly, x' = g'/g (x + 1) - 1
            noise.residual = shape - decoded
            if self.residual_mode == "relative":
                noise.extras["decoded"] = decoded
            if self.withheld_residual_tolerance is not None and self.withhold_residual_on:
                noise.extras["shape"] = shape  # what `_local_residual` re-anchors the residual to
        return noise

    def _decode_shape(self, noise: LatentNoise, cond: Tensor, gained: bool) -> Tensor:
        # without a gain the decoded mean is an image and is clamped to [-1, 1]; with one, only the image is
        loc = self.decode_loc(noise, cond)
        return loc if gained else loc.clamp(-1.0, 1.0)

    def decode(self, noise: LatentNoise, cond: Tensor, gain: Tensor | None = None) -> Tensor:
        """Latents, shape-parent features and the output gain -> image mean in [-1, 1] (no residual)."""
        return self.from_shape(self._decode_shape(noise, cond, gain is not None), gain).clamp(-1.0, 1.0)

    def predict(self, noise: LatentNoise, parents: Mapping[str, Tensor]) -> Tensor:
        gain = self.gain(parents)
        if "fit_image" in noise.extras:
            noise = self._fit_answering_rows(noise, parents)
        if self.shrinks_withheld and "parents" in noise.extras:
            noise = self._shrink_withheld(noise, parents)
        cond = self.condition(parents, noise.batch_size)
        if self.refine["steps"] and not self.training and "parents" in noise.extras:  # answer time only, as the fit
            noise = self._refine_withheld(noise, parents, cond, gain is not None)
        out = self._decode_shape(noise, cond, gain is not None)
        if "tone" in noise.extras:
            out = apply_tone(out, *noise.extras["tone"])
        if noise.residual is not None:
            withheld = self._changed_rows(noise, parents, self.withhold_residual_on)
            residual = noise.residual * (1.0 - withheld)
            if "decoded" in noise.extras:  # relative: the detail follows the counterfactual's brightness
                before = noise.extras["decoded"]
                ratio = ((out + 1 + RELATIVE_EPS) / (before + 1 + RELATIVE_EPS)).clamp(0.0, RELATIVE_MAX)
                lit = (torch.minimum(out, before) + 1) > RELATIVE_ON  # stroke in both: scale; edges: add
                residual = torch.where(lit, residual * ratio, residual)
            moved = torch.zeros_like(withheld)  # transported: rows with a new shape whose residual is kept
            if self.residual_mode == "transported":
                moved = self._changed_rows(noise, parents, self.shape_parents) * (1.0 - withheld)
            local, transported = "shape" in noise.extras and bool(withheld.any()), bool(moved.any())
            if local or transported:
                reference = self._factual_decode(noise, gain is not None)
                if transported:
                    residual = torch.where(moved.bool(), transport(residual, reference, out, self.resample), residual)
                if local:
                    residual = residual + withheld * self._local_residual(noise, out, reference)
            if gain is not None:
                # rows whose shape parents are kept: the residual follows the new gain (x' = g'/g (x + 1) - 1
                # under a pure gain change); rows with a new shape: it is added in the factual's image units
                kept = 1.0 - self._changed_rows(noise, parents, self.shape_parents)
                residual = residual * (kept * gain + (1 - kept) * self.gain(noise.extras["parents"])) / gain
            out = out + residual
        return self.from_shape(out, gain).clamp(-1.0, 1.0)

    def _factual_decode(self, noise: LatentNoise, gained: bool) -> Tensor:
        """The decode of the (possibly shrunk) latents under the factual parents, through the tone curve if any."""
        reference = self._decode_shape(noise, self.condition(noise.extras["parents"], noise.batch_size), gained)
        return apply_tone(reference, *noise.extras["tone"]) if "tone" in noise.extras else reference

    def _local_residual(self, noise: LatentNoise, out: Tensor, reference: Tensor) -> Tensor:
        """`withheld_residual_tolerance` t: the residual of rows whose withheld parents change, re-taken against the
        decode of the same (possibly shrunk) latents under the factual parents, r = x - d(z, pa), and kept only where
        the counterfactual decode d(z, pa') stays close to it: weight max(0, 1 - |d' - d| / t), |d' - d| the largest
        change over channels in each pixel's 3x3 neighbourhood. Where the parent change redraws the image the
        decode shows; elsewhere the factual's pixels stay. `reference` is `_factual_decode`."""
        moved = (out - reference).abs().amax(1, keepdim=True)
        moved = nn.functional.max_pool2d(moved, kernel_size=3, stride=1, padding=1)
        keep = (1.0 - moved / self.withheld_residual_tolerance).clamp(min=0.0)
        return keep * (noise.extras["shape"] - reference)

    def _shrink_withheld(
        self, noise: LatentNoise, parents: Mapping[str, Tensor], scales: LatentScales | None = None
    ) -> LatentNoise:
        """Rows whose withheld parents change get their latents scaled by `withheld_latent_scale` (or `scales`)
        toward 0, the prior mean of the codes: the part of the parent the latent still holds then weighs less."""
        if not (noise.standardised or self.latents_centred):
            raise ValueError(
                f"{self.node}: abduction.withheld_latent_scale needs latents whose prior mean is 0 "
                "(latents: exogenous for a parent-conditioned prior)"
            )
        factors = [torch.ones(noise.batch_size, device=z.device) for z in noise.latents]
        for p in self.withhold_residual_on:  # several changed parents: each level takes the smallest of their scales
            changed = self._changed_rows(noise, parents, (p,)).flatten()
            for i, scale in enumerate(self.latent_scales(p, scales)):  # lengths: `check_latent_scales`
                factors[i] = torch.minimum(factors[i], 1.0 - changed.to(factors[i]) * (1.0 - scale))
        latents = [z * f.to(z).view(-1, *[1] * (z.dim() - 1)) for z, f in zip(noise.latents, factors, strict=True)]
        return replace(noise, latents=latents)

    def _fit_answering_rows(self, noise: LatentNoise, parents: Mapping[str, Tensor]) -> LatentNoise:
        """`abduction.fit`, run where it can change the answer: rows abducted afresh with fitted latents (and the
        residual against their decode) are those whose shape parents change, or every row without a residual; a
        null or gain-only change returns the image's own pixels whatever the latents. Rows whose withheld parents
        change keep the encoder's latents unless `fit.withheld` (the fit chases the factual's own strokes, which a
        digit of another class does not share). Rows are fitted independently, so fitting a subset of the batch
        gives each row what fitting the whole batch would."""
        image = noise.extras["fit_image"]
        extras = {k: v for k, v in noise.extras.items() if k != "fit_image"}
        noise = replace(noise, extras=extras)
        rows = torch.ones(noise.batch_size, dtype=torch.bool, device=noise.latents[0].device)
        if noise.residual is not None:
            rows = self._changed_rows(noise, parents, self.shape_parents).flatten().bool()
        if not self.fit["withheld"] and self.withhold_residual_on:
            rows = rows & ~self._changed_rows(noise, parents, self.withhold_residual_on).flatten().bool()
        if not rows.any():
            return noise
        factual = {p: v[rows.to(v.device)] for p, v in extras["parents"].items()}
        part = self._abduct(image[rows.to(image.device)], factual, fit=True)

        def merge(full: Any, fitted: Any) -> Any:
            if isinstance(full, tuple):
                return tuple(merge(f, g) for f, g in zip(full, fitted, strict=True))
            full = full.clone()
            full[rows.to(full.device)] = fitted.to(full.dtype)
            return full

        for key in ("tone", "decoded"):
            if key in extras:
                extras[key] = merge(extras[key], part.extras[key])
        residual = None if noise.residual is None else merge(noise.residual, part.residual)
        latents = [merge(z, f) for z, f in zip(noise.latents, part.latents, strict=True)]
        return replace(noise, latents=latents, residual=residual, extras=extras)

    def image_log_likelihood(self, x: Tensor, noise: LatentNoise, cond: Tensor, gain: Tensor | None) -> Tensor:
        """(B,) log p(x | latents, parents) in nats under the family's likelihood, for `abduction.fit`; families
        without one (`has_likelihood` False) refuse the option when built (`no_likelihood_error`)."""
        raise self.no_likelihood_error()

    def no_likelihood_error(self) -> ValueError:
        """The error for `abduction.fit` on a family without a likelihood."""
        return ValueError(
            f"{self.family_name()} {self.node!r}: abduction.fit.steps > 0 fits the latents under the model's "
            "likelihood, which this family does not have (the VAE and HVAE do)"
        )

    def _fit_latents(self, noise: LatentNoise, x: Tensor, cond: Tensor, gain: Tensor | None) -> LatentNoise:
        """`abduction.fit`: the encoder's latents taken as the start of `steps` Adam steps of size `rate` on
        -log p(x | z, pa) + prior / 2 * |z|^2 (z the standardised codes, or the latents of an N(0, I) prior): a
        maximum a posteriori abduction that closes the encoder's amortisation gap (cf. Kim et al. 2018,
        semi-amortised inference), so the decode carries more of the image and the residual less. Each row's
        latents move on their own (the loss is a sum over rows, Adam is elementwise); the weights take no
        gradient."""
        rate, prior = float(self.fit["rate"]), float(self.fit["prior"])
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        latents = [z.detach().clone() for z in noise.latents]
        moments = [(torch.zeros_like(z), torch.zeros_like(z)) for z in latents]
        with torch.enable_grad():
            for step in range(1, int(self.fit["steps"]) + 1):
                leaves = [z.requires_grad_(True) for z in latents]
                loss = -self.image_log_likelihood(x, replace(noise, latents=leaves), cond, gain).sum()
                loss = loss + 0.5 * prior * sum((z * z).sum() for z in leaves)
                grads = torch.autograd.grad(loss, leaves)
                updated = []
                for z, g, (m, v) in zip(leaves, grads, moments, strict=True):
                    m.mul_(beta1).add_(g, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
                    updated.append((z - rate * m_hat / (v_hat.sqrt() + eps)).detach())
                latents = updated
        return replace(noise, latents=latents)

    def realism_logits(self, x: Tensor, cond: Tensor) -> Tensor:
        """(B,) logits of a realism critic on shapes `x` under parent features `cond` (real: high), for
        `abduction.refine`; families without a critic refuse it (`no_critic_error`)."""
        raise self.no_critic_error()

    def no_critic_error(self) -> ValueError:
        """The error for `abduction.refine` on a model without a realism critic."""
        return ValueError(
            f"{self.family_name()} {self.node!r}: abduction.refine.steps > 0 needs a realism critic, which this model "
            "does not have (the VAE and HVAE build one where adversarial.weight > 0)"
        )

    def _refine_withheld(
        self, noise: LatentNoise, parents: Mapping[str, Tensor], cond: Tensor, gained: bool
    ) -> LatentNoise:
        """`abduction.refine`: the latents of rows whose withheld parents change, moved by `steps` gradient steps
        of size `rate` on softplus(-D(decode(z), pa')) + proximity / 2 * |z - z0|^2, D the trained realism
        critic and z0 the latents as abducted (and shrunk): the decode drawn toward what the critic reads as a real
        image under the new parents, from the start `predict` would otherwise answer with (discriminator-driven
        latent refinement, cf. Tanaka 2019, Che et al. 2020). The other rows keep their latents."""
        rows = self._changed_rows(noise, parents, self.withhold_residual_on).flatten().bool()
        if not rows.any():
            return noise
        start = [z[rows].detach() for z in noise.latents]
        sub = replace(noise, latents=[z.clone().requires_grad_(True) for z in start], residual=None, extras={})
        rate, proximity = float(self.refine["rate"]), float(self.refine["proximity"])
        cond = cond[rows]
        with torch.enable_grad():
            for _ in range(int(self.refine["steps"])):
                decoded = self._decode_shape(sub, cond, gained)
                loss = nn.functional.softplus(-self.realism_logits(decoded, cond)).sum()
                for z, z0 in zip(sub.latents, start, strict=True):
                    loss = loss + 0.5 * proximity * ((z - z0) ** 2).sum()
                grads = torch.autograd.grad(loss, sub.latents)
                sub.latents = [
                    (z - rate * g).detach().requires_grad_(True) for z, g in zip(sub.latents, grads, strict=True)
                ]
        latents = []
        for z, new in zip(noise.latents, sub.latents, strict=True):
            z = z.clone()
            z[rows] = new.detach().to(z.dtype)
            latents.append(z)
        return replace(noise, latents=latents)

    @staticmethod
    def _changed_rows(noise: LatentNoise, parents: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
        """(B, 1, 1, 1): 1.0 for rows where any parent in `names` has a value in `parents` other than the factual
        one the abduction kept, else 0.0 (all 0.0 without such parents)."""
        factual, b = noise.extras["parents"], noise.batch_size
        changed = torch.zeros(b, dtype=torch.bool, device=noise.latents[0].device)
        for p in names:
            changed = changed | (parents[p].reshape(b, -1) != factual[p].reshape(b, -1)).any(1).to(changed.device)
        return changed.float()[:, None, None, None]

    def sample_noise(self, n: int) -> LatentNoise:
        return LatentNoise([torch.randn(n, *s, device=self.device) for s in self.noise_shapes()], standardised=True)

    # ----- training stability -----
    def stabilise_gradients(self) -> tuple[float, bool]:
        """Clip the gradient norm to `grad_clip`; return (norm before clipping, whether to skip the step).

        Call after backward() and before optimizer.step(); skip the step (and zero the grads) when told.
        """
        params = [p for p in self.parameters() if p.grad is not None]
        if not params:
            return 0.0, False
        max_norm = float("inf") if self.grad_clip is None else float(self.grad_clip)
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        skip = not math.isfinite(norm) or (self.grad_skip is not None and norm > float(self.grad_skip))
        return norm, skip

    def gain_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.gain_encoder, self.gain_net) if m is not None for p in m.parameters()]

    def parent_scale(self, parent: str) -> Tensor:
        """A continuous parent's scale: half its fixed range, else its running standard deviation."""
        enc = self.gain_encoder if parent in self.gain_parents else self.parent_encoder
        i = enc.continuous.index(parent)
        if bool(enc.fixed[i]):
            return (enc.hi[i] - enc.lo[i]).clamp(min=1e-12) / 2
        if enc.count > 1:
            return (enc.m2[i] / (enc.count - 1)).clamp(min=1e-12).sqrt()
        return torch.ones((), device=self.device)


class ELBOImageMechanism(LatentImageMechanism):
    """A latent image family with a likelihood (VAE, HVAE): trained on the negative ELBO (plus the independence
    penalty), which also bounds counterfactual fine-tuning (`imcf.training.finetune`).

    Config beyond `LatentImageMechanism`'s: kl_weight; kl_warmup (training steps over which the KL's weight rises
    linearly from 0 to kl_weight; 0: none; validation always scores the full weight); counterfactual_finetune:
    {enabled, weight, elbo_bound, lagrange_init, lagrange_lr_scale, gain_parents (false: the output gain is neither
    judged by the predictors nor trained: an exact rescaling the likelihood fits better than a predictor reads it)};
    adversarial: {weight, start, warmup, fraction, widths, hidden, layout, latent_scale, parents}, a realism term
    for counterfactual decodes (`adversarial_terms`; weight 0: off, no critic is built; latent_scale: the critic's
    decodes shrunk by this instead of `abduction.withheld_latent_scale`, same forms; null: that one; parents: the
    parents moved in the critic's decodes, the others kept factual; null: every parent; lr_scale: the critic's
    learning rate over the unit's, its own optimiser group: a two-timescale critic).
    """

    finetunable = True
    has_likelihood = True

    def __init__(
        self,
        node: str,
        kind: NodeKind,
        parent_kinds: Mapping[str, NodeKind],
        kl_weight: float = 1.0,
        kl_warmup: int = 0,
        counterfactual_finetune: Mapping[str, Any] | None = None,
        adversarial: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(node, kind, parent_kinds, **kwargs)
        check_number(self.family_name(), node, "kl_weight", kl_weight, 0.0)
        self.kl_weight = float(kl_weight)
        check_sizes(self.family_name(), node, 0, kl_warmup=kl_warmup)
        self.kl_warmup = int(kl_warmup)
        if self.kl_warmup > 0:  # steps seen, checkpointed: a resumed run continues the ramp
            self.register_buffer("kl_steps", torch.zeros((), dtype=torch.long))
        self.adversarial = adv = parse_options(
            adversarial,
            {
                "weight": 0.0,
                "start": 900,
                "warmup": 200,
                "fraction": 0.5,
                "widths": [16, 32, 64],
                "hidden": 64,
                "layout": "residual",
                "latent_scale": None,
                "parents": None,
                "lr_scale": 1.0,
            },
            f"{node}: adversarial",
        )
        # the scale of the critic's decodes (null: the abduction's), e.g. trained at one scale and answered at another
        self.critic_latent_scale: LatentScales | None = None
        if adv["latent_scale"] is not None:
            self.critic_latent_scale = self._latent_scales(
                adv["latent_scale"], node, self.withhold_residual_on, "adversarial.latent_scale"
            )
            self._scale_options.append(("adversarial.latent_scale", self.critic_latent_scale))
        family = self.family_name()
        check_number(family, node, "adversarial.weight", adv["weight"], 0.0)
        check_number(family, node, "adversarial.fraction", adv["fraction"], 0.0, above=True)
        check_number(family, node, "adversarial.lr_scale", adv["lr_scale"], 0.0, above=True)
        if adv["fraction"] > 1:
            raise ValueError(f"{family} {node!r}: adversarial.fraction must be in (0, 1], got {adv['fraction']!r}")
        check_sizes(family, node, 0, **{"adversarial.warmup": adv["warmup"], "adversarial.start": adv["start"]})
        if adv["layout"] not in CRITIC_LAYOUTS:
            raise ValueError(
                f"{family} {node!r}: adversarial.layout must be one of {CRITIC_LAYOUTS}, got {adv['layout']!r}"
            )
        # the parents an intervention moves in the critic's decodes (null: every parent)
        self.critic_parents: tuple[str, ...] = self.parents
        if adv["parents"] is not None:
            names = adv["parents"]
            if isinstance(names, str) or not isinstance(names, Sequence) or not names:
                raise ValueError(
                    f"{family} {node!r}: adversarial.parents must be a non-empty list of parent names or null, "
                    f"got {names!r}"
                )
            unknown = [p for p in names if p not in self.parents]
            if unknown:
                raise ValueError(
                    f"{family} {node!r}: adversarial.parents {unknown} are not parents of {node!r} "
                    f"(its parents: {list(self.parents)})"
                )
            self.critic_parents = tuple(names)
        self.critic = None
        if adv["weight"] > 0:
            check_sizes(family, node, **{"adversarial.widths": adv["widths"], "adversarial.hidden": adv["hidden"]})
            self.critic = ConditionalCritic(
                self.channels, self.size, adv["widths"], self.cond_features, int(adv["hidden"]), adv["layout"]
            )
            # steps seen, checkpointed: a resumed run continues the warm-up
            self.register_buffer("adversarial_steps", torch.zeros((), dtype=torch.long))
        if self.refine["steps"] and self.critic is None:
            raise self.no_critic_error()
        self.counterfactual_finetune = parse_options(
            counterfactual_finetune,
            {
                "enabled": False,
                "weight": 1.0,
                "elbo_bound": None,
                "lagrange_init": 1.0,
                "lagrange_lr_scale": 1.0,
                "gain_parents": False,
            },
            f"{node}: counterfactual_finetune",
        )
        for key in ("enabled", "gain_parents"):
            check_flag(family, node, f"counterfactual_finetune.{key}", self.counterfactual_finetune[key])

    def realism_logits(self, x: Tensor, cond: Tensor) -> Tensor:
        if self.critic is None:
            return super().realism_logits(x, cond)
        return self.critic(x, cond)

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Every trainable parameter at `lr`, the critic's in a group of its own at `lr * adversarial.lr_scale`
        where that is not 1 (at 1 one group, the layout of optimiser states checkpointed before the option)."""
        if self.critic is None or float(self.adversarial["lr_scale"]) == 1.0:
            return super().optimizer_groups(lr)
        critic = [p for p in self.critic.parameters() if p.requires_grad]
        ids = {id(p) for p in critic}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": critic, "lr": lr * float(self.adversarial["lr_scale"])}]

    def build_likelihood(self, width: int, likelihood: str, likelihood_std: float | None) -> ImageLikelihood:
        """The pixel likelihood on the decoder's `width` output features; a `likelihood_std` that is not a number
        > 0 or null is named with the family and node."""
        family = self.family_name()
        check_number(family, self.node, "likelihood_std", likelihood_std, 0.0, above=True, null=True)
        return ImageLikelihood(width, self.channels, likelihood, likelihood_std)

    @abstractmethod
    def decode_dist(self, noise: LatentNoise, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Latents and shape-parent features -> the likelihood's (loc, log_scale) of the shape, each (B, C, H, W)."""

    def decode_loc(self, noise: LatentNoise, cond: Tensor) -> Tensor:
        return self.decode_dist(noise, cond)[0]

    def image_log_likelihood(self, x: Tensor, noise: LatentNoise, cond: Tensor, gain: Tensor | None) -> Tensor:
        loc, log_scale = self.decode_dist(noise, cond)
        return self.likelihood.log_prob(x, self.from_shape(loc, gain), log_scale)

    @abstractmethod
    def elbo(self, x: Tensor, cond: Tensor, gain: Tensor | None = None) -> dict[str, Tensor]:
        """{"nll": (B,), "kl": (B,), optional "kl_<level>": (B,)} in nats per image, reparameterised, and
        optionally "codes": the posterior latents (means, standardised where the mode is exogenous) as a list,
        which the independence penalty reads. With a `gain` the networks see `to_shape(x, gain)` and the
        likelihood scores the image x at `from_shape(loc, gain)` (the pixel noise stays the image's)."""

    def loss(self, x: Tensor, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self._check_image(x)
        cond = self.condition(parents, x.shape[0])
        terms = self.elbo(x, cond, self.gain(parents))
        codes = terms.pop("codes", None)
        dims = float(x[0].numel())
        nll, kl = terms["nll"].mean() / dims, terms["kl"].mean() / dims
        elbo_loss = nll + self.kl_weight * kl
        out = {"loss": elbo_loss, "nll": nll.detach(), "kl": kl.detach()}
        if self.kl_warmup > 0 and self.training:  # validation scores the full weight, the objective the run ends on
            weight = self.current_kl_weight()
            out["loss"] = nll + weight * kl
            out["kl_weight"] = x.new_tensor(weight)
            self.kl_steps += 1
        for k, v in terms.items():
            if k.startswith("kl_"):
                out[k] = v.mean().detach() / dims
        penalty, logged = self.independence_penalty(codes, parents, x.shape[0])
        out["loss"] = out["loss"] + penalty
        out.update(logged)
        if self.critic is not None and self.training:
            adv = self.adversarial_terms(x, parents, cond)
            out["loss"] = out["loss"] + adv.pop("loss")
            out.update(adv)
        out["elbo"] = elbo_loss  # the bound counterfactual fine-tuning keeps (imcf.training.finetune)
        return out

    def current_kl_weight(self) -> float:
        """The KL's weight at this training step: rising linearly from 0 to `kl_weight` over the first `kl_warmup`
        steps (a KL warm-up: the latents are put to use before their price is paid in full, against a posterior
        that collapses onto the prior early in training), `kl_weight` after them and without a warm-up."""
        if self.kl_warmup <= 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, int(self.kl_steps) / self.kl_warmup)

    def current_adversarial_weight(self) -> float:
        """The adversarial term's weight at this training step: 0 for the first `start` + `warmup` / 2 steps,
        rising linearly to `adversarial.weight` at `start` + `warmup` (the independence penalty's ramp, delayed)."""
        adv = self.adversarial
        return warmup_weight(adv["weight"], adv["warmup"], self.adversarial_steps, adv["start"])

    def adversarial_terms(self, x: Tensor, parents: Mapping[str, Tensor], cond: Tensor) -> dict[str, Tensor]:
        """The realism term of one training batch (`adversarial.weight` > 0).

        The first `fraction` of the rows are abducted (posterior mean, no gradient to the encoder) and decoded
        under the parents of the next row (a random intervention on every parent, or on `adversarial.parents`
        alone with the others kept, with the latents of rows whose
        withheld parents change shrunk by `adversarial.latent_scale`, by default `withheld_latent_scale` as
        `predict` answers). A conditional critic
        (`ConditionalCritic`) learns to tell those decodes from real shapes under their own parents (logistic
        loss); the decoder gets the non-saturating loss -log D(decode) through a critic whose weights take no
        gradient from it, so one optimiser step trains both. Returns {"loss": weight * generator loss + critic
        loss, "adv_g", "adv_d", "adv_weight"}; the loss is 0 until the warm-up reaches the critic's start."""
        assert self.critic is not None
        weight = self.current_adversarial_weight()
        self.adversarial_steps += 1
        zero = x.new_zeros(())
        if weight <= 0:  # before the start or the ramp: no decode, no critic step
            return {"loss": zero, "adv_g": zero, "adv_d": zero, "adv_weight": zero}
        n = max(2, round(x.shape[0] * float(self.adversarial["fraction"])))
        x, cond = x[:n], cond[:n].detach()
        parents = {p: v[:n] for p, v in parents.items()}
        gain = self.gain(parents)
        shape = self.to_shape(x, gain)
        with torch.no_grad():
            noise = self.encode_latents(shape, cond)
        noise.extras["parents"] = parents
        moved = {p: v.roll(1, 0) if p in self.critic_parents else v for p, v in parents.items()}
        if self._shrinks(self.critic_latent_scale):
            noise = self._shrink_withheld(noise, moved, self.critic_latent_scale)
        if set(self.critic_parents) >= set(self.shape_parents):
            cond_cf = cond.roll(1, 0)  # the features are per row: the rolled parents' features
        else:  # some parents kept: their features, the running statistics left as they are
            cond_cf = self.condition(moved, n, update=False).detach()
        fake = self._decode_shape(noise, cond_cf, gain is not None)
        self.critic.requires_grad_(False)  # the decoder's loss trains the decoder only
        try:
            g_loss = nn.functional.softplus(-self.critic(fake, cond_cf)).mean()
        finally:
            self.critic.requires_grad_(True)
        d_loss = (
            nn.functional.softplus(-self.critic(shape.detach(), cond)).mean()
            + nn.functional.softplus(self.critic(fake.detach(), cond_cf)).mean()
        )
        return {
            "loss": weight * g_loss + d_loss,
            "adv_g": g_loss.detach(),
            "adv_d": d_loss.detach(),
            "adv_weight": x.new_tensor(weight),
        }
