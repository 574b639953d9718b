"""The Mechanism contract: every node's causal mechanism abducts, predicts, samples and has a loss."""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from imcf.graph import CausalGraph, NodeKind

Noise = Any  # a Tensor, or a small dataclass of tensors (latents plus a pixel residual)


class Mechanism(nn.Module, ABC):
    """One node's mechanism x = f(noise, parents).

    Subclasses set `exact_abduction` honestly: True when `predict(abduct(x, pa), pa)` equals `x`
    up to floating point, False when abduction is approximate (encoders, amortised posteriors).
    `config` holds the keyword arguments that rebuild the mechanism (saved with the SCM).
    """

    exact_abduction: bool = False
    # What a unit-level counterfactual on this node rests on beyond the graph (imcf.identify reports it);
    # every family states its own.
    abduction_assumption: str = (
        "the family states no abduction assumption; its counterfactuals rest on its own modelling choices"
    )

    def __init__(self, node: str, kind: NodeKind, parent_kinds: Mapping[str, NodeKind]) -> None:
        super().__init__()
        self.node = node
        self.kind = kind
        self.parent_kinds = dict(parent_kinds)
        self.parents: tuple[str, ...] = tuple(parent_kinds)
        self.config: dict[str, Any] = {}
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)
        self.register_load_state_dict_pre_hook(_drop_retired_state)

    @classmethod
    def from_graph(
        cls, graph: CausalGraph, node: str, extra_parents: Mapping[str, NodeKind] | None = None, **kwargs: Any
    ) -> Mechanism:
        """Build the mechanism of `node` with its kind and its parents' kinds read from `graph`.

        `extra_parents` are pseudo-parents (shared confounder noise of the node's c-component); they are not
        part of `config`, the component re-creates them.
        """
        cls.check_option_types(node, kwargs)
        kinds = {p: graph.kinds[p] for p in graph.parents(node)}
        kinds.update(extra_parents or {})
        mech = cls(node, graph.kinds[node], kinds, **kwargs)
        mech.config = dict(kwargs)
        return mech

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """Every constructor option of the family (its own, then those it passes on to its bases) with its default
        (`inspect.Parameter.empty` where it has none)."""
        defaults: dict[str, Any] = {}
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                for p in inspect.signature(vars(klass)["__init__"]).parameters.values():
                    if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self":
                        defaults.setdefault(p.name, p.default)
        return defaults

    @classmethod
    def family_name(cls) -> str:
        """The family's registry name (`vae`, `hvae`, ...), else its class name: how messages name the family."""
        return getattr(cls, "registry_name", cls.__name__)

    @classmethod
    def check_option_types(cls, node: str, config: Mapping[str, Any]) -> None:
        """Raise ValueError naming the option where `config` gives a string or a bool for an option whose default
        is a number (`kl_weight: abc` or a quoted `"30"` would otherwise fail deep inside, or read as 1 for `true`)."""
        defaults = cls.option_defaults()
        family = cls.family_name()
        for key, value in config.items():
            if is_number(defaults.get(key)) and isinstance(value, str | bool):
                raise ValueError(f"{family} {node!r}: {key} must be a number, got {value!r}")

    @classmethod
    def abduction_assumption_for(cls, config: Mapping[str, Any] | None = None) -> str:
        """The abduction assumption of this family built with `config` (a family whose assumption depends on
        its configuration overrides this)."""
        return cls.abduction_assumption

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    # ----- the contract -----
    @abstractmethod
    def abduct(self, x: Tensor, parents: Mapping[str, Tensor]) -> Noise:
        """Factual value and factual parents -> exogenous noise."""

    @abstractmethod
    def predict(self, noise: Noise, parents: Mapping[str, Tensor]) -> Tensor:
        """Noise and (possibly counterfactual) parents -> value."""

    @abstractmethod
    def sample_noise(self, n: int) -> Noise:
        """Draw `n` noise values from the prior."""

    def sample(self, parents: Mapping[str, Tensor], n: int | None = None) -> Tensor:
        """Draw values with fresh noise; `n` is needed only for root nodes."""
        return self.predict(self.sample_noise(self.batch_size(parents, n)), parents)

    @abstractmethod
    def loss(self, x: Tensor, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Training objective: {"loss": scalar, other logged terms...}."""

    #: config keys that change only how queries are answered, not what the weights mean (abduction settings, a
    #: sampler's steps): a checkpoint trained with other values still loads
    inference_options: tuple[str, ...] = ()
    #: takes `gain_parents`: the dataset's `image_gain` attributes reach it as an output gain (imcf.config)
    models_gain: bool = False
    #: the parents that act only through the output gain (`models_gain` families set it from `gain_parents`)
    gain_parents: tuple[str, ...] = ()

    # ----- optional training hooks (imcf.training.UnitModule calls them; the defaults do nothing special) -----
    #: True: the family trains itself with its own optimisers (`configure_unit_optimizers(optim)` and a
    #: `training_step(batch, module)`, e.g. the GAN); it must be alone in its training unit
    manual_optimization: bool = False

    def stabilise_gradients(self) -> tuple[float, bool] | None:
        """After backward, before the optimiser step: clip the gradients and return (norm before clipping, whether
        to skip this step); None (the default) leaves them alone."""
        return None

    #: can be fine-tuned on its counterfactuals (`imcf.training.finetune.CounterfactualObjective`): `loss` returns
    #: the bound it trains on under "elbo" (negative ELBO per dimension, with gradients), and abduct / predict
    #: are differentiable
    finetunable: bool = False
    #: the family's `counterfactual_finetune` options ({"enabled": ..., ...}); empty: it never fine-tunes
    counterfactual_finetune: Mapping[str, Any] = MappingProxyType({})
    #: state-dict entries that older checkpoints of the family hold and this version no longer has: dropped on
    #: load, so old runs still load
    retired_state: tuple[str, ...] = ()

    def gain_parameters(self) -> list[nn.Parameter]:
        """The parameters of the output gain (`gain_parents`); counterfactual fine-tuning leaves them as the
        likelihood fitted them unless it also judges the gain parents."""
        return []

    def support_bounds(self) -> tuple[float | None, float | None]:
        """Closed bounds of the values the node can take (None: unbounded on that side). The SCM refuses do()
        values outside them, naming the node; default: unbounded."""
        return None, None

    def parent_scale(self, parent: str) -> Tensor:
        """Scale of a continuous parent's values (fine-tuning divides a predictor's error by it, so attributes
        weigh alike); default 1."""
        return torch.ones((), device=self.device)

    #: decay of the exponential moving average of the weights this family trains best with (None: no averaging);
    #: a unit's `optim.ema_decay` overrides it (0: off). Diffusion models sample far better from averaged weights.
    ema_decay: float | None = None

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """Parameter groups of the unit's optimiser (e.g. a Lagrange multiplier at its own rate); default: one
        group of every trainable parameter at `lr`."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    # ----- helpers for families -----
    def batch_size(self, parents: Mapping[str, Tensor], n: int | None = None) -> int:
        """Batch size from the parents, or `n` for a root node."""
        if self.parents:
            return int(parents[self.parents[0]].shape[0])
        if n is None:
            raise ValueError(f"node {self.node!r} has no parents: pass n to sample()")
        return int(n)

    def parent_vector(self, parents: Mapping[str, Tensor], batch_size: int = 0) -> Tensor:
        """Parents flattened and concatenated in graph order as a float (B, D) tensor.

        A root node gets a (batch_size, 0) tensor.
        """
        missing = [p for p in self.parents if p not in parents]
        if missing:
            raise KeyError(f"mechanism of {self.node!r} needs parents {missing}; got {sorted(parents)}")
        if not self.parents:
            return torch.zeros(batch_size, 0, device=self.device)
        cols = []
        for p in self.parents:
            v = parents[p]
            expected = self.parent_kinds[p].tensor_shape
            if tuple(v.shape[1:]) != expected:
                raise ValueError(f"parent {p!r} of {self.node!r} has shape {tuple(v.shape)}, expected (B, {expected})")
            cols.append(v.reshape(v.shape[0], -1).to(self._device_anchor.dtype))
        return torch.cat(cols, dim=1)

    @property
    def parent_dim(self) -> int:
        return sum(k.dim for k in self.parent_kinds.values())


def _drop_retired_state(module: Mechanism, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for key in module.retired_state:
        state_dict.pop(prefix + key, None)


def check_sizes(family: str, node: str, at_least: int = 1, **sizes: int | Sequence[int]) -> None:
    """Raise ValueError naming the first size (a number or each of a list) below `at_least`, or an empty list."""
    for key, value in sizes.items():
        values = [value] if isinstance(value, int | float) else list(value)
        ok = [
            isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer() and v >= at_least
            for v in values
        ]  # is_integer: False for inf / NaN, where int(v) would raise
        if not values or not all(ok):
            raise ValueError(f"{family} {node!r}: {key} must be whole number(s) >= {at_least}, got {value!r}")


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_number(
    family: str, node: str, key: str, value: Any, at_least: float, *, above: bool = False, null: bool = False
) -> None:
    """Raise ValueError naming the option unless `value` is a finite number >= `at_least` (> with `above`), or
    None where `null` allows it."""
    if value is None and null:
        return
    if not is_number(value) or (value <= at_least if above else value < at_least):
        bound = f"{'>' if above else '>='} {at_least:g}" + (" or null" if null else "")
        raise ValueError(f"{family} {node!r}: {key} must be a number {bound}, got {value!r}")


def check_flag(family: str, node: str, key: str, value: Any) -> bool:
    """`value` if it is a bool; else a ValueError naming the option (a string "false" would read as true)."""
    if not isinstance(value, bool):
        raise ValueError(f"{family} {node!r}: {key} must be true or false, got {value!r}")
    return value


def check_parent_ranges(
    family: str, node: str, parent_kinds: Mapping[str, NodeKind], given: Mapping[str, Any] | None
) -> dict[str, tuple[float, float]]:
    """`parent_ranges` as {parent: (lo, hi)}: every key a parent, every value two finite numbers lo < hi;
    a ValueError names the parent otherwise."""
    if given is not None and not isinstance(given, Mapping):
        raise ValueError(f"{family} {node!r}: parent_ranges must be a mapping {{parent: [lo, hi]}}, got {given!r}")
    ranges: dict[str, tuple[float, float]] = {}
    for parent, value in (given or {}).items():
        if parent not in parent_kinds:
            raise ValueError(f"{family} {node!r}: parent_ranges given for non-parent {parent!r}; parents: "
                             f"{sorted(parent_kinds)}")  # fmt: skip
        pair = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
        ok = pair is not None and len(pair) == 2 and all(is_number(v) for v in pair) and pair[0] < pair[1]
        if not ok:
            raise ValueError(f"{family} {node!r}: parent_ranges.{parent} must be [lo, hi] with lo < hi, got {value!r}")
        ranges[parent] = (float(pair[0]), float(pair[1]))
    return ranges
