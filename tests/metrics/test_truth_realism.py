import math

import pytest
import torch

from imcf.evaluators.features import InceptionFeatures
from imcf.graph import NodeKind
from imcf.metrics.realism import fid, kid
from imcf.metrics.truth import PSNR_CAP, psnr, ssim, truth_scores


def test_psnr_known_shift_and_identity():
    x = torch.rand(3, 1, 16, 16) * 1.6 - 0.8
    assert torch.all(psnr(x, x) == PSNR_CAP)
    shifted = x + 2 * 5 / 255  # 5 grey levels everywhere: MSE = 25
    torch.testing.assert_close(psnr(shifted, x), torch.full((3,), 20 * math.log10(255 / 5)), atol=1e-3, rtol=0)


def test_ssim_identity_and_degradation():
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(2), atol=1e-5, rtol=0)
    assert torch.all(ssim(x, torch.rand(2, 1, 16, 16) * 2 - 1) < 0.5)


def test_truth_scores_attribute_and_image():
    assert truth_scores(NodeKind("continuous"), torch.tensor([[1.0]]), torch.tensor([[0.25]]))["error"].item() == 0.75
    img = NodeKind("image", shape=(1, 16, 16))
    x = torch.zeros(2, 1, 16, 16)
    s = truth_scores(img, x, x)
    assert s["mae"].sum() == 0 and torch.all(s["psnr"] == PSNR_CAP)


def test_fid_closed_form():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 4, generator=gen)
    assert fid(real, real) == pytest.approx(0.0, abs=1e-6)
    # same covariance, mean shifted by c in each of d dims: FID = d c^2
    assert fid(real, real + 0.5) == pytest.approx(4 * 0.25, rel=1e-4)


def test_kid_same_distribution_is_near_zero_and_shift_is_positive():
    gen = torch.Generator().manual_seed(1)
    real, other = torch.randn(400, 8, generator=gen), torch.randn(400, 8, generator=gen)
    mean, std = kid(real, other, subsets=5, subset_size=100)
    assert abs(mean) < 0.1 and std >= 0
    shifted, _ = kid(real, real + 1.0, subsets=5, subset_size=100)
    assert shifted > 50 * abs(mean) and shifted > 1.0


def test_inception_without_weights_says_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded at run time.*realism.features=predictors"):
        InceptionFeatures(str(tmp_path / "missing.pth"))
