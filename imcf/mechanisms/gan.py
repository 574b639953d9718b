"""Conditional GAN with an encoder for an image node, trained as a bidirectional GAN (BiGAN / ALI):
a generator G(z, pa), an encoder E(x, pa) and a discriminator D(x, z, pa) that tells real pairs
(x, E(x, pa)) from generated pairs (G(z, pa), z). An optional second stage fine-tunes the encoder alone
to minimise the reconstruction error of G(E(x, pa), pa). Abduction is E(x, pa) plus the optional pixel
residual of `LatentImageMechanism`; prediction is G(z, new parents)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imcf.graph import NodeKind
from imcf.mechanisms.base import check_number, check_sizes, is_number
from imcf.mechanisms.latent_image import LatentImageMechanism, LatentNoise, parse_options
from imcf.nn.conv import ConvDecoder, ConvEncoder, broadcast_cond
from imcf.nn.critic import apply_spectral_norm
from imcf.registry import MECHANISMS

ADVERSARIAL_LOSSES = ("nonsaturating", "hinge")
REGULARIZERS = ("r1", "spectral_norm", "none")


class ImageEncoder(nn.Module):
    """[x, pa map] -> residual conv stages -> flat features -> Linear(features + pa) -> `out_dim` vector.

    `film` also conditions every residual block on pa (FiLM); the discriminator goes without, since
    spectral normalisation cannot normalise FiLM's zero-initialised layers.
    """

    def __init__(
        self,
        channels: int,
        widths: Sequence[int],
        blocks: int,
        cond_dim: int,
        out_dim: int,
        bottom: int,
        film: bool = True,
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.film = film and cond_dim > 0
        self.convs = ConvEncoder(channels + cond_dim, widths, blocks, cond_dim=cond_dim if self.film else 0, norm=norm)
        self.head = nn.Linear(widths[-1] * bottom**2 + cond_dim, out_dim)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        inp = torch.cat([x, broadcast_cond(cond, x)], 1) if self.cond_dim else x
        h = self.convs(inp, cond if self.film else None)[-1]
        return self.head(torch.cat([F.gelu(h).flatten(1), cond], 1))


class Generator(nn.Module):
    """[z, pa] -> Linear -> low-resolution map -> FiLM-conditioned residual upsampling -> tanh image.

    `norm` normalises inside every residual block and before the output head: without it the residual
    stream grows under the adversarial signal until tanh saturates and the generator stops learning.
    """

    def __init__(
        self,
        channels: int,
        widths: Sequence[int],
        blocks: int,
        cond_dim: int,
        latent_dim: int,
        bottom: int,
        norm: str = "group",
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.bottom = bottom
        self.from_latent = nn.Linear(latent_dim + cond_dim, widths[-1] * bottom**2)
        self.decoder = ConvDecoder(widths, blocks, cond_dim=cond_dim, norm=norm)
        self.out_norm = nn.GroupNorm(min(8, widths[0]), widths[0]) if norm == "group" else nn.Identity()
        self.to_image = nn.Conv2d(widths[0], channels, 3, padding=1)

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        h = self.from_latent(torch.cat([z, cond], 1)).view(z.shape[0], -1, self.bottom, self.bottom)
        h = self.decoder(h, cond if self.cond_dim else None)
        return torch.tanh(self.to_image(F.gelu(self.out_norm(h))))


class JointDiscriminator(nn.Module):
    """D(x, z, pa): image features and latent features joined by an MLP, plus a projection term
    <embed(pa), features> so that the parents shape the decision (Miyato & Koyama 2018)."""

    def __init__(
        self,
        channels: int,
        widths: Sequence[int],
        blocks: int,
        cond_dim: int,
        latent_dim: int,
        bottom: int,
        hidden: int,
    ) -> None:
        super().__init__()
        self.image = ImageEncoder(channels, widths, blocks, cond_dim, hidden, bottom, film=False)
        self.latent = nn.Sequential(nn.Linear(latent_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.joint = nn.Sequential(nn.GELU(), nn.Linear(2 * hidden, hidden), nn.GELU())
        self.out = nn.Linear(hidden, 1)
        self.project = nn.Linear(cond_dim, hidden, bias=False) if cond_dim else None

    def forward(self, x: Tensor, z: Tensor, cond: Tensor) -> Tensor:
        """Logits (B,): high for real (x, E(x)) pairs, low for generated (G(z), z) pairs."""
        h = self.joint(torch.cat([self.image(x, cond), self.latent(z)], 1))
        logit = self.out(h).squeeze(1)
        if self.project is not None:
            logit = logit + (self.project(cond) * h).sum(1)
        return logit


@MECHANISMS.register("gan")
class ConditionalGAN(LatentImageMechanism):
    """BiGAN / ALI conditioned on the parents; manual optimisation with three Adams (D, G + E, E fine-tuning).

    Config (besides `LatentImageMechanism`'s abduction, parent_ranges, grad_clip, grad_skip):
      latent_dim; widths (per resolution, full resolution first; bottom resolution H / 2**(len - 1));
      blocks (residual blocks per resolution); disc_widths (null = widths); disc_hidden;
      loss: nonsaturating | hinge; regularizer: r1 (gradient penalty on real pairs, weight r1_gamma) |
      spectral_norm (on every layer of D) | none;
      recon_weight: pixel reconstruction term ||G(E(x)) - x||^2 added to the generator/encoder loss during
        adversarial training (0 = pure BiGAN);
      encoder_finetune: {after_steps: training batches of adversarial training before the encoder-only stage
        (null = never), latent_weight: weight of ||E(G(z)) - z||^2 in that stage};
      betas: Adam betas for all optimizers (null = the run's optim.betas); disc_lr_scale: D's lr multiplier;
      norm: group | none, normalisation in the generator and encoder (never in D: R1 and spectral norm
        assume per-sample outputs);
      gain_parents (the dataset's `image_gain`): continuous positive parents that scale the image in proportion,
        x = g * (s + 1) - 1 with g = prod v / ref fixed (`gain_form: proportional`, the only form: no likelihood
        to learn a gain from); encoder, generator and discriminator work on the shape s.
    """

    models_gain = True  # a fixed proportional gain only: no likelihood to learn one from
    abduction_assumption = (
        "approximate abduction: the noise is found by an encoder or by inverting the generator (optimisation), "
        "with no guarantee that it is the posterior of the true noise; the counterfactual assumes the recovered "
        "latent is parent-independent"
    )

    manual_optimization = True

    def __init__(
        self,
        node: str,
        kind: NodeKind,
        parent_kinds: Mapping[str, NodeKind],
        latent_dim: int = 64,
        widths: Sequence[int] = (32, 64, 128, 128),
        blocks: int = 1,
        disc_widths: Sequence[int] | None = None,
        disc_hidden: int = 256,
        loss: str = "nonsaturating",
        regularizer: str = "r1",
        r1_gamma: float = 1.0,
        recon_weight: float = 0.0,
        encoder_finetune: Mapping[str, Any] | None = None,
        betas: Sequence[float] | None = (0.5, 0.999),
        disc_lr_scale: float = 1.0,
        norm: str = "group",
        abduction: Mapping[str, Any] | None = None,
        parent_ranges: Mapping[str, list[float]] | None = None,
        grad_clip: float | None = 200.0,
        grad_skip: float | None = None,
        independence_weight: float | Mapping[str, float] = 0.0,
        independence_warmup: int = 0,
        gain_parents: Sequence[str] | None = None,
        gain_form: str = "proportional",
    ) -> None:
        if gain_form != "proportional":
            raise ValueError(
                f"gan {node!r}: gain_form must be proportional (a learned gain needs a likelihood), got {gain_form!r}"
            )
        super().__init__(
            node,
            kind,
            parent_kinds,
            abduction=abduction,
            parent_ranges=parent_ranges,
            grad_clip=grad_clip,
            grad_skip=grad_skip,
            independence_weight=independence_weight,
            independence_warmup=independence_warmup,
            gain_parents=gain_parents,
            gain_form=gain_form,
        )
        if self.refine["steps"]:
            raise self.no_critic_error()
        if self.abduct_sample:
            raise ValueError(f"gan {node!r}: abduction.sample needs a stochastic encoder; the GAN's is deterministic")
        if loss not in ADVERSARIAL_LOSSES:
            raise ValueError(f"gan {node!r}: loss must be one of {ADVERSARIAL_LOSSES}, got {loss!r}")
        if regularizer not in REGULARIZERS:
            raise ValueError(f"gan {node!r}: regularizer must be one of {REGULARIZERS}, got {regularizer!r}")
        check_sizes("gan", node, latent_dim=latent_dim, widths=widths, disc_hidden=disc_hidden)
        check_sizes("gan", node, 0, blocks=blocks)
        if disc_widths is not None:
            check_sizes("gan", node, disc_widths=disc_widths)
        widths = [int(w) for w in widths]
        disc_widths = widths if disc_widths is None else [int(w) for w in disc_widths]
        for key, ws in (("widths", widths), ("disc_widths", disc_widths)):
            if not ws or self.size % 2 ** (len(ws) - 1):
                raise ValueError(f"gan {node!r}: {key}={ws} needs size {self.size} divisible by 2**(len - 1)")
        check_number("gan", node, "r1_gamma", r1_gamma, 0.0)
        check_number("gan", node, "recon_weight", recon_weight, 0.0)
        check_number("gan", node, "disc_lr_scale", disc_lr_scale, 0.0, above=True)
        pair = list(betas) if isinstance(betas, Sequence) and not isinstance(betas, str) else None
        if betas is not None and not (
            pair is not None and len(pair) == 2 and all(is_number(b) and 0.0 <= b < 1.0 for b in pair)
        ):
            raise ValueError(f"gan {node!r}: betas must be two numbers in [0, 1) (null: the run's optim.betas), "
                             f"got {betas!r}")  # fmt: skip
        self.latent_dim = int(latent_dim)
        self.adversarial_loss = loss
        self.regularizer = regularizer
        self.r1_gamma = float(r1_gamma)
        self.recon_weight = float(recon_weight)
        self.encoder_finetune = parse_options(
            encoder_finetune, {"after_steps": None, "latent_weight": 1.0}, f"{node}: encoder_finetune"
        )
        check_number("gan", node, "encoder_finetune.latent_weight", self.encoder_finetune["latent_weight"], 0.0)
        if self.encoder_finetune["after_steps"] is not None:
            check_sizes("gan", node, 0, **{"encoder_finetune.after_steps": self.encoder_finetune["after_steps"]})
        self.betas = None if betas is None else tuple(float(b) for b in betas)
        self.disc_lr_scale = float(disc_lr_scale)
        d = self.cond_features
        c = self.channels
        bottom, disc_bottom = self.size // 2 ** (len(widths) - 1), self.size // 2 ** (len(disc_widths) - 1)
        if norm not in ("group", "none"):
            raise ValueError(f"gan {node!r}: norm must be group or none, got {norm!r}")
        self.generator = Generator(c, widths, blocks, d, self.latent_dim, bottom, norm=norm)
        self.encoder = ImageEncoder(c, widths, blocks, d, self.latent_dim, bottom, norm=norm)
        self.discriminator = JointDiscriminator(c, disc_widths, blocks, d, self.latent_dim, disc_bottom, disc_hidden)
        if regularizer == "spectral_norm":
            apply_spectral_norm(self.discriminator)
        # training batches seen, so the encoder fine-tuning stage starts at the same point after a resume
        self.register_buffer("train_batches", torch.zeros((), dtype=torch.long))
        self.check_latent_scales()

    # ----- LatentImageMechanism -----
    def encode_latents(self, x: Tensor, cond: Tensor) -> LatentNoise:
        # the prior is N(0, I) whatever the parents, so the latent is its own standardised coordinate
        return LatentNoise([self.encoder(x, cond)], standardised=self.latent_mode == "exogenous")

    def decode_loc(self, noise: LatentNoise, cond: Tensor) -> Tensor:
        return self.generator(noise.latents[0], cond)

    def noise_shapes(self) -> list[tuple[int, ...]]:
        return [(self.latent_dim,)]

    # ----- objectives -----
    def _d_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        if self.adversarial_loss == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def _g_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """Generator and encoder loss: the encoder makes real pairs look generated, G the reverse."""
        if self.adversarial_loss == "hinge":
            return real.mean() - fake.mean()
        return F.softplus(real).mean() + F.softplus(-fake).mean()

    def _r1(self, x: Tensor, z: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Discriminator logits on real pairs and the R1 penalty gamma/2 * E||grad_(x, z) D||^2."""
        x, z = x.detach().requires_grad_(True), z.detach().requires_grad_(True)
        logits = self.discriminator(x, z, cond)
        gx, gz = torch.autograd.grad(logits.sum(), [x, z], create_graph=True)
        penalty = gx.pow(2).flatten(1).sum(1) + gz.pow(2).sum(1)
        return logits, 0.5 * self.r1_gamma * penalty.mean()

    def in_finetune_stage(self) -> bool:
        """Whether training has moved on to the encoder-only fine-tuning stage."""
        after = self.encoder_finetune["after_steps"]
        return after is not None and int(self.train_batches) >= int(after)

    def loss(self, x: Tensor, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Validation objective: pixel reconstruction error of G(E(x)) plus the generator's adversarial
        loss; the discriminator loss and the latent cycle error are logged beside it."""
        self._check_image(x)
        cond = self.condition(parents, x.shape[0])
        x = self.to_shape(x, self.gain(parents))  # with gain parents the networks see and draw the shape
        z_real = self.encoder(x, cond)
        z = torch.randn(x.shape[0], self.latent_dim, device=x.device)
        fake = self.generator(z, cond)
        real_logits = self.discriminator(x, z_real, cond)
        fake_logits = self.discriminator(fake, z, cond)
        recon = F.mse_loss(self.generator(z_real, cond), x)
        g_loss = self._g_loss(real_logits, fake_logits)
        return {
            "loss": recon + g_loss,
            "recon": recon.detach(),
            "g_loss": g_loss.detach(),
            "d_loss": self._d_loss(real_logits, fake_logits).detach(),
            "latent_recon": F.mse_loss(self.encoder(fake, cond), z).detach(),
        }

    # ----- manual optimisation (imcf.training.module.UnitModule) -----
    def configure_unit_optimizers(self, optim: Mapping[str, Any]) -> list[torch.optim.Optimizer]:
        """[discriminator, generator + encoder, encoder fine-tuning] Adams; lr, betas, weight_decay from optim.

        The fine-tuning stage gets its own optimizer: the adversarial stage's second-moment estimates are
        scaled to adversarial gradients and would shrink the reconstruction steps."""
        lr = float(optim.get("lr", 1e-3))
        betas = self.betas if self.betas is not None else tuple(optim.get("betas", (0.9, 0.999)))
        wd = float(optim.get("weight_decay", 0.0))
        d_opt = torch.optim.Adam(
            self.discriminator.parameters(), lr=lr * self.disc_lr_scale, betas=betas, weight_decay=wd
        )
        ge_params = [*self.generator.parameters(), *self.encoder.parameters()]
        ge_opt = torch.optim.Adam(ge_params, lr=lr, betas=betas, weight_decay=wd)
        return [d_opt, ge_opt, torch.optim.Adam(self.encoder.parameters(), lr=lr, betas=betas, weight_decay=wd)]

    def _step(self, optimizer: Any, loss: Tensor, module: Any) -> float:
        """Backward through `module`, clip / skip as configured, step; returns the gradient norm."""
        self.zero_grad(set_to_none=True)
        module.manual_backward(loss)
        norm, skip = self.stabilise_gradients()
        if not skip:
            optimizer.step()
        self.zero_grad(set_to_none=True)
        return norm

    def manual_training_step(
        self, x: Tensor, parents: Mapping[str, Tensor], optimizers: Sequence[Any], module: Any
    ) -> dict[str, Tensor]:
        """One batch: a discriminator step then a generator + encoder step, or (in the fine-tuning stage)
        one encoder step on the reconstruction error with G and D frozen. Returns the terms to log."""
        self._check_image(x)
        d_opt, ge_opt, e_opt = optimizers
        b = x.shape[0]
        cond = self.condition(parents, b).detach()  # once per batch: updates the running statistics once
        x = self.to_shape(x, self.gain(parents))  # the GAN models the shape (a fixed gain: nothing to train)
        z = torch.randn(b, self.latent_dim, device=x.device)
        finetune = self.in_finetune_stage()
        self.train_batches += 1
        if finetune:
            return self._finetune_step(x, cond, z, e_opt, module)

        # discriminator: real (x, E(x)) vs generated (G(z), z)
        with torch.no_grad():
            z_real = self.encoder(x, cond)
            fake = self.generator(z, cond)
        if self.regularizer == "r1":
            real_logits, penalty = self._r1(x, z_real, cond)
        else:
            real_logits, penalty = self.discriminator(x, z_real, cond), torch.zeros((), device=x.device)
        fake_logits = self.discriminator(fake, z, cond)
        d_loss = self._d_loss(real_logits, fake_logits)
        d_norm = self._step(d_opt, d_loss + penalty, module)

        # generator and encoder against a fixed discriminator
        self.discriminator.requires_grad_(False)
        try:
            z_real = self.encoder(x, cond)
            g_loss = self._g_loss(
                self.discriminator(x, z_real, cond), self.discriminator(self.generator(z, cond), z, cond)
            )
            recon = F.mse_loss(self.generator(z_real, cond), x)
            dep_penalty, dep = self.independence_penalty(z_real, parents, b)
            ge_norm = self._step(ge_opt, g_loss + self.recon_weight * recon + dep_penalty, module)
        finally:
            self.discriminator.requires_grad_(True)
        return {
            **dep,
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "r1": penalty.detach(),
            "recon": recon.detach(),
            "d_real": real_logits.detach().mean(),
            "d_fake": fake_logits.detach().mean(),
            "d_grad_norm": torch.tensor(d_norm),
            "ge_grad_norm": torch.tensor(ge_norm),
        }

    def _finetune_step(self, x: Tensor, cond: Tensor, z: Tensor, optimizer: Any, module: Any) -> dict[str, Tensor]:
        """Encoder only: ||G(E(x)) - x||^2 + latent_weight * ||E(G(z)) - z||^2 (G's weights get no gradient)."""
        self.generator.requires_grad_(False)
        try:
            recon = F.mse_loss(self.generator(self.encoder(x, cond), cond), x)
            with torch.no_grad():
                fake = self.generator(z, cond)
            latent = F.mse_loss(self.encoder(fake, cond), z)
            norm = self._step(optimizer, recon + float(self.encoder_finetune["latent_weight"]) * latent, module)
        finally:
            self.generator.requires_grad_(True)
        return {"recon": recon.detach(), "latent_recon": latent.detach(), "ge_grad_norm": torch.tensor(norm)}
