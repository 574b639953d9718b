"""DDIM contract cases.

Reconstruction tolerance, stated honestly: DDIM inversion is approximate, and how well it round-trips depends
on training. Case 1 is the tiny UNet trained 100 steps on real MNIST digits (tests/mechanisms/ddim_helpers.py),
run with 25 DDIM steps on 4 training digits: measured max-abs error 0.70-0.84 (mean-abs about 0.02, PSNR about
30 dB; a few edge pixels dominate the max), so `recon_tol = 1.0`. At 50 steps the same model measures max-abs
about 0.4 and PSNR about 35 dB. Case 2 (3x64x64, parent maps, guidance) is untrained: an untrained network
gives no meaningful inversion, so its round trip is not checked (skipped with that reason); it is there for the
other contract checks (shapes, determinism, rebuild from config, loss, error naming).
"""

import torch

from imcf.graph import CausalGraph
from imcf.mechanisms.ddim import DDIM
from tests.mechanisms.contract import ContractCase
from tests.mechanisms.ddim_helpers import MNIST_GRAPH, mnist32, tiny_trained


def _trained_mnist() -> ContractCase:
    x, parents = mnist32()
    pick = slice(7, None, 1250)  # 4 digits of different classes
    mech = tiny_trained(num_inference_steps=25)
    return ContractCase(
        "ddim[mnist 1x32x32, trained tiny, 25 steps]",
        CausalGraph.from_dict(MNIST_GRAPH),
        "x",
        mech,
        x[pick],
        {p: v[pick] for p, v in parents.items()},
        recon_tol=1.0,
    )


def _untrained_rgb64() -> ContractCase:
    g = CausalGraph.from_dict(
        {
            "smiling": "binary",
            "age": "continuous",
            "img": {"kind": "image", "shape": [3, 64, 64], "parents": ["smiling", "age"]},
        }
    )
    mech = DDIM.from_graph(
        g,
        "img",
        block_out_channels=[8, 16],
        norm_num_groups=4,
        parent_maps=True,
        guidance_scale=2.0,
        num_inference_steps=4,
        parent_ranges={"age": [0.0, 100.0]},
    )
    parents = {"smiling": torch.tensor([[0.0], [1.0]]), "age": torch.tensor([[25.0], [70.0]])}
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    return ContractCase(
        "ddim[3x64x64, untrained, maps+guidance]",
        g,
        "img",
        mech,
        x,
        parents,
        recon_tol="untrained DDIM: no meaningful inversion",
    )


CASES = [_trained_mnist, _untrained_rgb64]
