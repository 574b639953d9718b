import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from imcf.evaluators.minimality_vae import LatentVAE
from imcf.metrics.minimality import counterfactual_latent_divergence, gaussian_kl, latent_kl


def test_gaussian_kl_matches_torch_and_uses_the_scale():
    gen = torch.Generator().manual_seed(0)
    q_loc, q_ls, p_loc, p_ls = (torch.randn(5, 3, generator=gen) for _ in range(4))
    expected = kl_divergence(Normal(q_loc, q_ls.exp()), Normal(p_loc, p_ls.exp()))
    torch.testing.assert_close(gaussian_kl(q_loc, q_ls, p_loc, p_ls), expected)
    # the published code passed the mean as the log-scale; the scale must matter on its own
    assert gaussian_kl(q_loc, q_ls, q_loc, q_ls + 1).abs().sum() > 0
    assert torch.all(latent_kl((q_loc, q_ls), (q_loc, q_ls)) == 0)


def test_cld_known_values():
    # 1-D latents, unit scale: KL(r || x) = (r - x)^2 / 2
    ref = (torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.zeros(4, 1))
    ref_groups = torch.tensor([0, 0, 1, 1])
    factual = (torch.tensor([[0.0]]), torch.zeros(1, 1))
    # counterfactual at 1.5: d = 1.125; cf group 1 has KLs {2, 4.5} -> none <= d; factual group {0, 0.5} none >= d
    cf = (torch.tensor([[1.5]]), torch.zeros(1, 1))
    out = counterfactual_latent_divergence(factual, cf, ref, ref_groups, torch.tensor([0]), torch.tensor([1]))
    assert out["latent_kl"].item() == pytest.approx(1.125)
    assert out["p_closer"].item() == 0 and out["p_farther"].item() == 0
    assert out["cld"].item() == pytest.approx(0.0, abs=1e-7)
    # the factual itself as its counterfactual: d = 0, every factual-group KL >= 0
    same = counterfactual_latent_divergence(factual, factual, ref, ref_groups, torch.tensor([0]), torch.tensor([1]))
    assert same["p_farther"].item() == 1 and same["p_closer"].item() == 0
    assert same["cld"].item() == pytest.approx(math.log(0.8 + 0.2 * math.e))
    # an empty group gives NaN rather than a made-up probability
    empty = counterfactual_latent_divergence(factual, cf, ref, ref_groups, torch.tensor([0]), torch.tensor([7]))
    assert math.isnan(empty["cld"].item())


def test_vae_posterior_shapes_and_finite_loss():
    vae = LatentVAE([1, 16, 16], latent_dim=4, width=8)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    loc, ls = vae.posterior(x)
    assert loc.shape == ls.shape == (3, 4)
    assert torch.isfinite(vae.loss({"image": x})["loss"])
