"""Per-sample scores of node values, shared by the evaluator's models (their test quality) and its metrics:
class labels of binary / categorical values, absolute error, agreement, F1, mean and standard deviation."""

from __future__ import annotations

from torch import Tensor

from imcf.graph import NodeKind


def labels(kind: NodeKind, value: Tensor) -> Tensor:
    """Class labels (B,) from a batch value: binary (B, 1) probabilities or {0, 1}, thresholded at 0.5;
    categorical (B, K) one-hot or probabilities -> argmax."""
    if kind.name == "binary":
        return (value.reshape(value.shape[0], -1)[:, 0] >= 0.5).long()
    if kind.name == "categorical":
        return value.argmax(1).long()
    raise ValueError(f"labels() needs a binary or categorical kind, got {kind}")


def absolute_error(predicted: Tensor, target: Tensor) -> Tensor:
    """Per-sample absolute error (B,) between two (B, 1) (or (B,)) continuous values."""
    if predicted.shape[0] != target.shape[0]:
        raise ValueError(f"batch sizes differ: {tuple(predicted.shape)} vs {tuple(target.shape)}")
    b = predicted.shape[0]
    return (predicted.float().reshape(b, -1) - target.float().reshape(b, -1)).abs().mean(1)


def correct(predicted: Tensor, target: Tensor) -> Tensor:
    """Per-sample 1.0 where two label vectors (B,) agree, else 0.0 (its mean is the accuracy)."""
    return (predicted.reshape(-1) == target.reshape(-1)).float()


def f1_score(predicted: Tensor, target: Tensor, num_classes: int = 2) -> float:
    """F1 of label vectors: of class 1 for two classes (sklearn's `average='binary'`), macro otherwise.

    A class absent from both predictions and targets is left out of the macro average (sklearn's labels=None);
    a class with no true positives scores 0.
    """
    predicted, target = predicted.reshape(-1).long(), target.reshape(-1).long()
    classes = [1] if num_classes == 2 else sorted(set(predicted.tolist()) | set(target.tolist()))
    scores = []
    for c in classes:
        tp = ((predicted == c) & (target == c)).sum().item()
        fp = ((predicted == c) & (target != c)).sum().item()
        fn = ((predicted != c) & (target == c)).sum().item()
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(sum(scores) / len(scores)) if scores else 0.0


def mean_and_std(x: Tensor) -> tuple[float, float]:
    """Mean and (unbiased) standard deviation of a 1-D tensor; std 0 for a single value."""
    x = x.float().reshape(-1)
    return x.mean().item(), x.std().item() if x.numel() > 1 else 0.0


__all__ = ["absolute_error", "correct", "f1_score", "labels", "mean_and_std"]
