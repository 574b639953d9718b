"""Conditional DDIM image mechanism: a diffusers UNet, abduction by DDIM inversion, prediction by DDIM sampling.

This is the per-node DDIM encode / decode of the Diffusion Causal Model (Chao et al.) on images:
the exogenous noise of the image is the DDIM latent x_T reached by running the deterministic
(eta = 0) probability-flow ODE backwards from the factual image under the factual parents; the
counterfactual is the forward ODE from that x_T under the counterfactual parents. The noise
schedule and both ODE solvers are diffusers' (`DDPMScheduler`, `DDIMScheduler`,
`DDIMInverseScheduler`), built from one config so inversion and sampling share their time grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from imcf.graph import NodeKind
from imcf.mechanisms.base import Mechanism, check_flag, check_number, check_parent_ranges, check_sizes, is_number
from imcf.nn.gain import PowerGain, from_shape, to_shape
from imcf.nn.parents import ParentEncoder
from imcf.registry import MECHANISMS

GUIDANCE_FROM = ("factual", "null")
#: noise schedules that diffusers' DDPM, DDIM and DDIM-inverse schedulers all take
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass
class DiffusionNoise:
    """Abducted noise of a DDIM image: the inverted latent x_T, and the encoded factual parents it was inverted
    under (`reference`; None for a draw from the prior), which guidance from the factual steers away from."""

    x_T: Tensor  # noqa: N815 (the diffusion literature's name)
    reference: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.x_T.shape[0])


@MECHANISMS.register("ddim")
class DDIM(Mechanism):
    """Image node x = DDIM_sample(x_T, parents) with x_T ~ N(0, I); abduction is DDIM inversion.

    Parents enter through `ParentEncoder`, then an MLP to the UNet's time-embedding width, added to the
    time embedding (`class_embed_type="identity"`); with `parent_maps=True` the encoded parents are also
    concatenated to the input as constant channels. During training the parents are replaced by a
    learned null embedding (and zero maps) with probability `cfg_dropout`, so sampling can use
    classifier-free guidance with scale w: eps = eps_base + w * (eps_parents - eps_base).

    Abduction inverts under the factual parents without guidance (w = 1), so it is as exact as the solver.
    Prediction samples under the (counterfactual) parents with guidance. `guidance_from` names the base:
    "factual" (default) is the factual parents the noise was abducted under, so guidance amplifies only what
    the intervention changed and a row whose parents did not change follows the unguided ODE exactly (a null
    intervention gives what w = 1 gives); "null" is the learned null condition (classic classifier-free
    guidance). With the factual base, `guidance_parents` ("all", "discrete" or a list) names the parents whose
    change is amplified: the base is the counterfactual condition with those parents put back to their factual
    values, so the others (e.g. continuous parents, which guidance would overshoot) follow the plain model. A
    draw from the prior has no factual parents and is guided from the null condition. w = 1 is the plain
    conditional model in every case. `guidance_scale` may also give one w per guided parent ({digit: 2,
    thickness: 1.25}, factual base): each parent's change is amplified by its own w and a row that changed
    several adds their amplified changes (compositional guidance); a prior draw then uses the largest w.
    `guidance_interval` [lo, hi] limits guidance to the sampling steps whose timestep t has lo <= t / T <= hi
    (T = num_train_timesteps; Kynkaanniemi et al. 2024); the other steps use the plain conditional model. The default
    [0, 1] guides every step; on the simple faces graph the attributes are drawn in the detail half ([0, 0.5] kept the
    face best, [0.5, 1] lost most of the effect; docs/results.md).

    `gain_parents` (continuous, positive; the dataset's `image_gain` reaches it through `models_gain`) act as a
    fixed proportional output gain, x = g * (s + 1) - 1 with g = prod(v / reference): the diffusion models the
    shape s from the other parents and never sees a gain parent, so changing only a gain parent rescales the
    image's grey levels (up to the solver's round-trip error).

    `ema_decay` asks the training unit to keep an exponential moving average of the weights (the unit's result and
    validation use it; `imcf.training.run.ema_decay`): early in training the averaged weights sample the asked
    digit far more often than the raw ones (docs/results.md, issue 17).

    The inversion is approximate (each inversion step evaluates the network at the start of the step,
    sampling at its end), so `exact_abduction` is False; the round-trip error falls as the number of steps
    grows (docs/mechanism_ddim.md gives measured numbers).
    """

    abduction_assumption = (
        "exact invertible mechanism (up to solver error): deterministic DDIM inversion maps the image to its "
        "latent noise given the parents; the counterfactual is that of the learned ODE map, one bijection among "
        "many that fit the same data"
    )

    exact_abduction = False
    models_gain = True
    inference_options = (
        "guidance_scale",
        "guidance_from",
        "guidance_parents",
        "guidance_interval",
        "num_inference_steps",
        "clamp_output",
    )

    def __init__(
        self,
        node: str,
        kind: NodeKind,
        parent_kinds: Mapping[str, NodeKind],
        block_out_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        attention: bool = False,
        norm_num_groups: int = 8,
        dropout: float = 0.0,
        parent_maps: bool = False,
        parent_ranges: Mapping[str, Sequence[float]] | None = None,
        cfg_dropout: float = 0.1,
        guidance_scale: float | Mapping[str, float] = 1.0,
        guidance_from: str = "factual",
        guidance_parents: str | Sequence[str] = "all",
        guidance_interval: Sequence[float] = (0.0, 1.0),
        num_inference_steps: int = 50,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        clamp_output: bool = True,
        gain_parents: Sequence[str] | None = None,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(node, kind, parent_kinds)
        if kind.name != "image":
            raise ValueError(f"ddim needs an image node; {node!r} is {kind}")
        _check_options(node, kind, block_out_channels, norm_num_groups, cfg_dropout, num_inference_steps,
                       num_train_timesteps, guidance_from, beta_schedule)  # fmt: skip
        self.cfg_dropout = float(cfg_dropout)
        if ema_decay is not None and not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ddim {node!r}: ema_decay must be in [0, 1) (null: no averaging), got {ema_decay}")
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.guidance_from = guidance_from
        self.guidance_parents = self._guided(node, parent_kinds, guidance_parents)
        self.guidance_scale = self._scales(node, self.guidance_parents, gain_parents or (), guidance_scale,
                                           guidance_from)  # fmt: skip
        self.guidance_interval = _interval(node, guidance_interval)
        self.num_inference_steps = int(num_inference_steps)
        self.clamp_output = check_flag("ddim", node, "clamp_output", clamp_output)
        check_flag("ddim", node, "attention", attention)
        ranges = check_parent_ranges("ddim", node, parent_kinds, parent_ranges)
        self.gain_parents = self._gain_parents(node, parent_kinds, gain_parents or ())
        # the network sees the shape parents; gain parents act only through the output gain
        self.shape_parents = tuple(p for p in parent_kinds if p not in self.gain_parents)
        shape_kinds = {p: parent_kinds[p] for p in self.shape_parents}
        self.parent_maps = check_flag("ddim", node, "parent_maps", parent_maps) and bool(self.shape_parents)
        # gain g = prod(v / reference): the upper end of the parent's range if given, else its training mean
        reference = [float(ranges[p][1]) if p in ranges else 0.0 for p in self.gain_parents]
        self.register_buffer("gain_reference", torch.tensor(reference))
        self.register_buffer("gain_count", torch.zeros(()))
        fixed = torch.tensor([p in ranges for p in self.gain_parents], dtype=torch.bool)
        self.register_buffer("_gain_fixed", fixed, persistent=False)
        self.gain_net = PowerGain(self.gain_parents, 1, node, learned=False)  # no state: checkpoints are unchanged

        time_embed_dim = 4 * block_out_channels[0]
        if self.shape_parents:
            self.encoder = ParentEncoder(shape_kinds, {p: r for p, r in ranges.items() if p in shape_kinds})
            d = self.encoder.dim
            self.project = nn.Sequential(
                nn.Linear(d, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
            )
            self.null_embedding = nn.Parameter(torch.zeros(time_embed_dim))
            cols = [torch.full((k.dim,), p in self.guidance_parents) for p, k in shape_kinds.items()]
            self.register_buffer("_guided_columns", torch.cat(cols), persistent=False)
            ends = torch.tensor([k.dim for k in shape_kinds.values()]).cumsum(0).tolist()
            #: the encoded columns of each shape parent, [start, end)
            self._columns = {p: (e - k.dim, e) for (p, k), e in zip(shape_kinds.items(), ends, strict=True)}
        else:
            self.encoder = None
        extra_in = self.encoder.dim if self.parent_maps else 0
        self.unet = _unet(kind, block_out_channels, layers_per_block, norm_num_groups, dropout, attention, extra_in,
                          bool(self.shape_parents))  # fmt: skip
        # One schedule, three views of it: training noise, DDIM sampling, DDIM inversion.
        schedule = dict(
            num_train_timesteps=int(num_train_timesteps),
            beta_schedule=beta_schedule,
            clip_sample=False,
            prediction_type="epsilon",
        )
        self.train_scheduler = DDPMScheduler(**schedule)
        self.scheduler = DDIMScheduler(**schedule, set_alpha_to_one=True)
        self.inverse_scheduler = DDIMInverseScheduler(**schedule, set_alpha_to_one=True)

    @staticmethod
    def _guided(node: str, parent_kinds: Mapping[str, NodeKind], given: str | Sequence[str]) -> tuple[str, ...]:
        """The parents whose change guidance from the factual amplifies: "all", "discrete" or a list of names."""
        if given == "all":
            return tuple(parent_kinds)
        if given == "discrete":
            return tuple(p for p, k in parent_kinds.items() if k.name in ("binary", "categorical"))
        if isinstance(given, str):
            raise ValueError(f"ddim {node!r}: guidance_parents must be 'all', 'discrete' or a list, got {given!r}")
        unknown = [p for p in given if p not in parent_kinds]
        if unknown:
            raise ValueError(
                f"ddim {node!r}: guidance_parents {unknown} are not parents of {node!r}: {list(parent_kinds)}"
            )
        return tuple(given)

    @staticmethod
    def _scales(
        node: str, guided: tuple[str, ...], gain: Sequence[str], given: Any, guidance_from: str
    ) -> float | dict[str, float]:
        """The guidance scale: one number for every guided parent, or {parent: w} for each guided parent the
        network sees (its change is amplified by its own w; guidance from the factual only)."""
        if isinstance(given, (int, float)) and not isinstance(given, bool):
            check_number("ddim", node, "guidance_scale", given, 0.0)
            return float(given)
        if not isinstance(given, Mapping):
            raise ValueError(f"ddim {node!r}: guidance_scale must be a number or {{parent: number}}, got {given!r}")
        if guidance_from != "factual":
            raise ValueError(f"ddim {node!r}: a guidance_scale per parent needs guidance_from 'factual'")
        stray = [p for p in given if p not in guided or p in gain]
        if stray:
            raise ValueError(
                f"ddim {node!r}: guidance_scale names {stray}, which are not guided parents the network sees "
                f"(guidance_parents {list(guided)}, gain parents {list(gain)})"
            )
        missing = [p for p in guided if p not in given and p not in gain]
        if missing:
            raise ValueError(f"ddim {node!r}: guidance_scale has no scale for guided parent(s) {missing}")
        bad = {p: w for p, w in given.items() if isinstance(w, bool) or not isinstance(w, (int, float))}
        if bad:
            raise ValueError(f"ddim {node!r}: guidance_scale values must be numbers, got {bad}")
        for p, w in given.items():
            check_number("ddim", node, f"guidance_scale.{p}", w, 0.0)
        return {p: float(w) for p, w in given.items()}

    @staticmethod
    def _gain_parents(node: str, parent_kinds: Mapping[str, NodeKind], given: Sequence[str]) -> tuple[str, ...]:
        if isinstance(given, str):
            raise ValueError(f"ddim {node!r}: gain_parents must be a list of parent names, got {given!r}")
        bad = [p for p in given if p not in parent_kinds or parent_kinds[p].name != "continuous"]
        if bad:
            raise ValueError(
                f"ddim {node!r}: gain_parents {bad} are not continuous parents of {node!r}: {list(parent_kinds)}"
            )
        return tuple(given)

    # ----- conditioning -----
    def condition(self, parents: Mapping[str, Tensor], batch_size: int) -> Tensor | None:
        """Parents -> encoded (B, D) features of the shape parents (None when there are none)."""
        self.parent_vector(parents, batch_size)  # validates names and shapes with clear errors
        if self.encoder is None:
            return None
        return self.encoder({p: parents[p].to(self.device) for p in self.shape_parents})

    def gain(self, parents: Mapping[str, Tensor]) -> Tensor | None:
        """The output gain prod(v / reference) over the gain parents, (B, 1, 1, 1); None without gain parents.

        A fixed proportional gain: the image is x = g * (s + 1) - 1 with s the shape the diffusion models, so a
        gain parent scales the image's grey levels and nothing else (a learned gain would collapse under the
        noise-prediction loss). The reference of a parent without a range is its mean over the training data."""
        if not self.gain_parents:
            return None
        values = torch.cat(
            [parents[p].reshape(-1, 1).to(self.device, self._device_anchor.dtype) for p in self.gain_parents], 1
        )
        if self.training:
            with torch.no_grad():  # running mean of the parents without a fixed reference
                total = self.gain_count + values.shape[0]
                mean = self.gain_reference + (values.mean(0) - self.gain_reference) * values.shape[0] / total
                self.gain_reference.copy_(torch.where(self._gain_fixed, self.gain_reference, mean))
                self.gain_count.fill_(total)
        return self.gain_net(values, self.gain_reference)

    to_shape = staticmethod(to_shape)
    from_shape = staticmethod(from_shape)

    def eps(self, x_t: Tensor, t: Tensor | int, features: Tensor | None, keep: Tensor | None = None) -> Tensor:
        """Predicted noise at `x_t`, timestep `t`; `keep` (B,) bool marks rows conditioned on their parents
        (the others get the null embedding and zero parent maps); None keeps all."""
        if features is None:
            return self.unet(x_t, t).sample
        emb = self.project(features)
        if keep is not None:
            emb = torch.where(keep[:, None], emb, self.null_embedding.expand_as(emb))
        inp = x_t
        if self.parent_maps:
            maps = features if keep is None else features * keep[:, None].to(features.dtype)
            inp = torch.cat([x_t, maps[:, :, None, None].expand(-1, -1, *x_t.shape[2:])], dim=1)
        return self.unet(inp, t, class_labels=emb).sample

    def guidance_groups(self, device: torch.device | None = None) -> list[tuple[Tensor, float]]:
        """(columns, w) pairs: each group's change from the base is amplified by its w. One group of every
        guided column for a single scale; one group per guided parent for a scale per parent."""
        if not isinstance(self.guidance_scale, Mapping):
            return [(self._guided_columns.to(device), self.guidance_scale)]
        groups = []
        for p, w in self.guidance_scale.items():
            cols = torch.zeros_like(self._guided_columns, device=device)
            cols[slice(*self._columns[p])] = True
            groups.append((cols, w))
        return groups

    def guided_eps(self, x_t: Tensor, t: Tensor | int, features: Tensor | None, base: Tensor | None = None) -> Tensor:
        """Guided noise prediction eps_base + sum_g w_g (eps_g - eps_base): `base` (B, D) are the features to
        guide from (None: the null condition, with the largest scale), eps_g the prediction under the base with
        group g's columns (every guided column, or one parent's for a scale per parent) set to `features`. Rows
        whose features equal their base get eps_features exactly; the plain conditional prediction when every
        scale is 1. A row that changed one group only costs one extra prediction."""
        scales = (
            list(self.guidance_scale.values()) if isinstance(self.guidance_scale, Mapping) else [self.guidance_scale]
        )
        top = max(scales)
        if features is None or all(w == 1.0 for w in scales):
            return self.eps(x_t, t, features)
        if base is None:
            b = x_t.shape[0]
            keep = torch.arange(2 * b, device=x_t.device) < b
            both = self.eps(torch.cat([x_t, x_t]), t, torch.cat([features, features]), keep)
            cond, null = both[:b], both[b:]
            return null + top * (cond - null)
        cond = self.eps(x_t, t, features)
        moved = features != base
        changed = moved.any(dim=1)
        if not bool(changed.any()):
            return cond
        rows = changed.nonzero().squeeze(1)
        x_r, f_r, b_r, m_r = x_t[rows], features[rows], base[rows], moved[rows]
        eps_base = self.eps(x_r, t, b_r)
        out = eps_base.clone()
        for cols, w in self.guidance_groups(features.device):
            in_group = m_r[:, cols].any(dim=1)
            if not bool(in_group.any()):
                continue
            only = in_group & ~m_r[:, ~cols].any(dim=1)  # changed this group alone: eps_g is the conditional
            eps_g = cond[rows].clone()
            partial = in_group & ~only
            if bool(partial.any()):
                eps_g[partial] = self.eps(x_r[partial], t, torch.where(cols, f_r, b_r)[partial])
            out = out + (w * in_group.to(out.dtype))[:, None, None, None] * (eps_g - eps_base)
        return cond.index_put((rows,), out)

    # ----- the contract -----
    @torch.no_grad()
    def abduct(self, x: Tensor, parents: Mapping[str, Tensor]) -> DiffusionNoise:
        """DDIM inversion of the factual image under the factual parents, unguided: x_0 -> x_T."""
        self._check_image(x)
        features = self.condition(parents, x.shape[0])
        sample = self.to_shape(x.to(self.device, self._device_anchor.dtype), self.gain(parents))
        self.inverse_scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        for t in self.inverse_scheduler.timesteps:
            sample = self.inverse_scheduler.step(self.eps(sample, t, features), t, sample).prev_sample
        return DiffusionNoise(sample, features)

    @torch.no_grad()
    def predict(self, noise: DiffusionNoise | Tensor, parents: Mapping[str, Tensor]) -> Tensor:
        """DDIM sampling (eta = 0) from x_T under the given (counterfactual) parents, guided: x_T -> x_0.

        `noise` is what `abduct` or `sample_noise` returned, or a bare x_T tensor (guided from the null)."""
        if isinstance(noise, Tensor):
            noise = DiffusionNoise(noise)
        self._check_image(noise.x_T)
        features = self.condition(parents, noise.batch_size)
        base = None
        if self.guidance_from == "factual" and noise.reference is not None and features is not None:
            reference = noise.reference.to(self.device)
            if reference.shape != features.shape:
                raise ValueError(
                    f"ddim {self.node!r}: the noise was abducted from {reference.shape[0]} rows, parents have "
                    f"{features.shape[0]}"
                )
            # the counterfactual with the guided parents put back to their factual values
            base = torch.where(self._guided_columns, reference, features)
        sample = noise.x_T.to(self.device, self._device_anchor.dtype)
        self.scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        lo, hi = (bound * self.scheduler.config.num_train_timesteps for bound in self.guidance_interval)
        for t in self.scheduler.timesteps:
            guided = lo <= float(t) <= hi
            eps = self.guided_eps(sample, t, features, base) if guided else self.eps(sample, t, features)
            sample = self.scheduler.step(eps, t, sample, eta=0.0).prev_sample
        sample = self.from_shape(sample, self.gain(parents))
        return sample.clamp(-1.0, 1.0) if self.clamp_output else sample

    def sample_noise(self, n: int) -> DiffusionNoise:
        return DiffusionNoise(torch.randn(n, *self.kind.tensor_shape, device=self.device))

    def loss(self, x: Tensor, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Noise-prediction MSE at a uniformly drawn timestep, parents dropped with prob `cfg_dropout`."""
        self._check_image(x)
        b = x.shape[0]
        features = self.condition(parents, b)
        x = self.to_shape(x, self.gain(parents))
        noise = torch.randn_like(x)
        t = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (b,), device=x.device)
        x_t = self.train_scheduler.add_noise(x, noise, t)
        keep = None
        if features is not None and self.training and self.cfg_dropout > 0:
            keep = torch.rand(b, device=x.device) >= self.cfg_dropout
        mse = (self.eps(x_t, t, features, keep) - noise).pow(2).mean()
        return {"loss": mse, "eps_mse": mse.detach()}

    def _check_image(self, x: Tensor) -> None:
        expected = self.kind.tensor_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"ddim {self.node!r}: expected images (B, {expected}), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        parts: dict[str, Any] = {
            "node": self.node,
            "parents": list(self.parents),
            "steps": self.num_inference_steps,
            "guidance": self.guidance_scale,
            "guidance_from": self.guidance_from,
            "guidance_interval": list(self.guidance_interval),
        }
        return ", ".join(f"{k}={v}" for k, v in parts.items())


def _interval(node: str, given: Any) -> tuple[float, float]:
    """[lo, hi] with 0 <= lo <= hi <= 1, or a ValueError naming the node and the option."""
    ok = (
        isinstance(given, Sequence)
        and not isinstance(given, str)
        and len(given) == 2
        and all(is_number(v) for v in given)
    )
    if not ok or not 0.0 <= given[0] <= given[1] <= 1.0:
        raise ValueError(
            f"ddim {node!r}: guidance_interval must be [lo, hi] with 0 <= lo <= hi <= 1 (fractions of the "
            f"training timesteps), got {given!r}"
        )
    return float(given[0]), float(given[1])


def _check_options(
    node: str,
    kind: NodeKind,
    block_out_channels: Sequence[int],
    norm_num_groups: int,
    cfg_dropout: float,
    num_inference_steps: int,
    num_train_timesteps: int,
    guidance_from: str,
    beta_schedule: str,
) -> None:
    """ValueError naming the node and the option for a DDIM configuration that cannot work."""
    check_sizes("ddim", node, num_train_timesteps=num_train_timesteps, num_inference_steps=num_inference_steps,
                block_out_channels=block_out_channels, norm_num_groups=norm_num_groups)  # fmt: skip
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"ddim {node!r}: beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    _, height, width = kind.shape  # type: ignore[misc]
    levels = len(block_out_channels)  # >= 1: check_sizes refuses an empty list
    factor = 2 ** (levels - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"ddim {node!r}: image shape {kind.shape} must be divisible by 2**(levels-1) = {factor} "
            f"for block_out_channels {list(block_out_channels)}"
        )
    bad = [c for c in block_out_channels if c % norm_num_groups]
    if bad:
        raise ValueError(f"ddim {node!r}: block_out_channels {bad} not divisible by norm_num_groups")
    if not 0.0 <= cfg_dropout < 1.0:
        raise ValueError(f"ddim {node!r}: cfg_dropout must be in [0, 1), got {cfg_dropout}")
    if num_inference_steps < 1 or num_inference_steps > num_train_timesteps:
        raise ValueError(
            f"ddim {node!r}: num_inference_steps must be in [1, {num_train_timesteps}], got {num_inference_steps}"
        )
    if guidance_from not in GUIDANCE_FROM:
        raise ValueError(f"ddim {node!r}: guidance_from must be one of {GUIDANCE_FROM}, got {guidance_from!r}")


def _unet(
    kind: NodeKind,
    block_out_channels: Sequence[int],
    layers_per_block: int,
    norm_num_groups: int,
    dropout: float,
    attention: bool,
    extra_in: int,
    conditioned: bool,
) -> UNet2DModel:
    """The diffusers UNet: the image (plus `extra_in` parent maps) in, the noise out; the parents' embedding is
    added to the time embedding (`class_embed_type="identity"`) when `conditioned`."""
    channels, height, width = kind.shape  # type: ignore[misc]
    levels = len(block_out_channels)
    down = ["AttnDownBlock2D" if attention and i == levels - 1 else "DownBlock2D" for i in range(levels)]
    up = ["AttnUpBlock2D" if attention and i == 0 else "UpBlock2D" for i in range(levels)]
    return UNet2DModel(
        sample_size=(height, width),
        in_channels=channels + extra_in,
        out_channels=channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(int(c) for c in block_out_channels),
        layers_per_block=int(layers_per_block),
        norm_num_groups=int(norm_num_groups),
        dropout=float(dropout),
        add_attention=bool(attention),
        attention_head_dim=min(32, int(block_out_channels[-1])),
        class_embed_type="identity" if conditioned else None,
    )
