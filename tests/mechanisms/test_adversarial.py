"""The adversarial realism term of the likelihood image families (`adversarial` option of ELBOImageMechanism)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imcf.mechanisms.hvae import HierarchicalVAE
from imcf.mechanisms.vae import ConditionalVAE
from tests.mechanisms.test_image_mechanisms import GRAPH, TINY_HVAE, TINY_VAE

VAE = {**TINY_VAE, "abduction": {"withheld_latent_scale": 0.5}}


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    return x, {"ink": torch.rand(n, 1, generator=g), "digit": F.one_hot(torch.arange(n) % 10, 10).float()}


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("family", "cfg"), [(ConditionalVAE, VAE), (HierarchicalVAE, TINY_HVAE)])
def test_the_decoder_learns_against_the_critic_and_the_critic_only_from_its_own_loss(family, cfg) -> None:
    """One optimiser step trains both: the critic's gradient is that of its logistic loss whatever the
    decoder's weight; the decoder's scales with the weight; the encoder gets none (the latents are abducted)."""
    x, pa = batch()
    got = {}
    for weight in (0.1, 10.0):
        torch.manual_seed(0)
        mech = family.from_graph(GRAPH, "image", adversarial={"weight": weight}, **cfg)
        terms = mech.adversarial_terms(x, pa, mech.condition(pa, x.shape[0]))
        assert set(terms) == {"loss", "adv_g", "adv_d", "adv_weight"}
        assert float(terms["adv_weight"]) == pytest.approx(weight)
        terms["loss"].backward()
        got[weight] = (terms, grads(mech.critic), grads(mech))
    (t1, c1, m1), (t2, c2, m2) = got[0.1], got[10.0]
    assert float(t1["adv_d"]) == pytest.approx(float(t2["adv_d"])) and float(t1["adv_d"]) > 0
    assert c1 and c1.keys() == c2.keys()
    for k in c1:
        torch.testing.assert_close(c1[k], c2[k])
    decoder = [k for k in m1 if not k.startswith("critic.") and k in m2 and not torch.allclose(m1[k], m2[k])]
    assert decoder, "the decoder's gradient must grow with the adversarial weight"
    assert not any(k.startswith(("encoder.", "to_posterior.")) for k in m1), sorted(m1)


def test_warmup_starts_the_critic_halfway_and_evaluation_leaves_the_loss_alone() -> None:
    x, pa = batch()
    mech = ConditionalVAE.from_graph(GRAPH, "image", adversarial={"weight": 2.0, "warmup": 4}, **VAE)
    seen = []
    for _ in range(5):
        seen.append(mech.current_adversarial_weight())
        out = mech.loss(x, pa)
        assert ("adv_d" in out) and (float(out["adv_d"]) > 0) == (seen[-1] > 0)
    assert seen == [0.0, 0.0, 0.0, 1.0, 2.0]
    assert int(mech.adversarial_steps) == 5 and "adversarial_steps" in mech.state_dict()
    mech.eval()
    with torch.no_grad():
        b = mech.loss(x, pa)
    assert "adv_g" not in b and int(mech.adversarial_steps) == 5  # validation: the ELBO only (best-epoch choice)
    assert float(b["loss"]) == float(b["elbo"])


def test_no_critic_without_a_weight_and_bad_options_are_named() -> None:
    assert ConditionalVAE.from_graph(GRAPH, "image", **VAE).critic is None
    for bad, message in [
        ({"weight": -1}, r"adversarial.weight must be a number >= 0"),
        ({"weight": 1, "fraction": 0}, r"adversarial.fraction must be a number > 0"),
        ({"weight": 1, "fraction": 1.5}, r"adversarial.fraction must be in \(0, 1\]"),
        ({"weight": 1, "warmup": -3}, r"adversarial.warmup must be whole number"),
        ({"weight": 1, "widths": [8, 8, 8, 8, 8, 8, 8]}, r"critic widths .* divisible"),
        ({"weight": 1, "hidden": 0}, r"adversarial.hidden must be whole number"),
    ]:
        with pytest.raises(ValueError, match=message):
            ConditionalVAE.from_graph(GRAPH, "image", adversarial=bad, **VAE)
    with pytest.raises(KeyError, match=r"adversarial: unknown key\(s\) \['wieght'\]"):
        ConditionalVAE.from_graph(GRAPH, "image", adversarial={"wieght": 1}, **VAE)
