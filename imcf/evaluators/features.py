"""Pretrained feature networks the evaluator reads images with: Inception-v3 pool features (FID / KID on natural
images) and LPIPS. Both load local weights only (nothing is downloaded at run time) and fail with a message that
says where the file must go."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from imcf.io import MissingFileError

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


def inception_weights_path(path: str | None = None) -> Path:
    """Where the Inception-v3 weights are expected: `path`, else the torch hub cache."""
    return Path(path) if path else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features (B, 2048) of images in [-1, 1] (grey repeated to RGB), from local weights."""

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        path = inception_weights_path(weights)
        if not path.is_file():
            raise MissingFileError(
                f"Inception features need the FID Inception-v3 weights at {path} and nothing is downloaded at "
                f"run time; copy {INCEPTION_WEIGHTS} there (or set realism.inception_weights=<file>), or use "
                "realism.features=predictors (the default domain features)"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
            )
        except ModuleNotFoundError as e:  # torch-fidelity is an optional dependency
            raise ModuleNotFoundError(
                f"Inception features need torch-fidelity (pip install torch-fidelity): {e}"
            ) from None
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(pixels).reshape(images.shape[0], -1)


def lpips_weights_available(net: str = "alex") -> bool:
    """Whether torchvision's backbone weights for LPIPS are already in the local torch hub cache."""
    names = {"alex": "alexnet-owt-", "vgg": "vgg16-", "squeeze": "squeezenet1_1-"}
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return folder.is_dir() and any(p.name.startswith(names[net]) for p in folder.iterdir())


class LPIPSDistance(nn.Module):
    """Per-sample LPIPS (torchmetrics) on images in [-1, 1]; grey images are repeated to 3 channels.

    Refuses to start unless the backbone weights are in the local cache (nothing is downloaded).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if not lpips_weights_available(net):
            raise MissingFileError(
                f"LPIPS needs torchvision's {net} weights in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
                "they are not there and nothing is downloaded at run time. Copy them there or set "
                "composition.lpips=false"
            )
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.lpips = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="none")

    @torch.no_grad()
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        return self.lpips(a.clamp(-1, 1), b.clamp(-1, 1)).reshape(-1)
