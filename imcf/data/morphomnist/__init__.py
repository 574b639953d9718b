"""Morpho-MNIST: morphometrics (`measure`), perturbations (`perturb`), the thickness -> intensity SCM and digit
rendering (`scm`), the embedded generated dataset with true counterfactuals (`dataset`, registered as
`morphomnist`) and the released files (`real`, registered as `morphomnist_real`).

Definitions follow Castro et al., "Morpho-MNIST: Quantitative Assessment and Diagnostics for Representation
Learning" (JMLR 2019) and the thickness -> intensity SCM of Pawlowski et al. (NeurIPS 2020). The functions of
`measure`, `perturb` and `scm` are importable from here (`from imcf.data import morphomnist as mm;
mm.measure_batch(...)`).
"""

from imcf.data.morphomnist import dataset, real  # noqa: E402,F401  (registers the datasets)
from imcf.data.morphomnist.measure import (
    DEFAULT_UPSCALE,
    FEATURES,
    MEASURE_SCALE,
    THRESHOLD,
    ValueRange,
    binarise,
    downscale,
    intensity,
    measure_batch,
    measure_image,
    medial_axis,
    to_uint8,
    upscale,
)
from imcf.data.morphomnist.perturb import (
    Morphology,
    fit_thickness,
    fracture,
    set_intensity,
    set_thickness,
    swell,
    thicken,
    thin,
)
from imcf.data.morphomnist.scm import (
    INTENSITY_LOW,
    INTENSITY_RANGE,
    THICKNESS_GAMMA_RATE,
    THICKNESS_GAMMA_SHAPE,
    THICKNESS_SHIFT,
    default_workers,
    intensity_mechanism,
    intensity_noise,
    pad_to,
    render_batch,
    render_digit,
    sample_noise,
    thickness_mechanism,
)

__all__ = [
    "INTENSITY_LOW",
    "INTENSITY_RANGE",
    "THICKNESS_GAMMA_RATE",
    "THICKNESS_GAMMA_SHAPE",
    "THICKNESS_SHIFT",
    "DEFAULT_UPSCALE",
    "FEATURES",
    "MEASURE_SCALE",
    "Morphology",
    "THRESHOLD",
    "ValueRange",
    "binarise",
    "default_workers",
    "downscale",
    "fit_thickness",
    "fracture",
    "intensity",
    "intensity_mechanism",
    "intensity_noise",
    "measure_batch",
    "measure_image",
    "medial_axis",
    "pad_to",
    "render_batch",
    "render_digit",
    "sample_noise",
    "set_intensity",
    "set_thickness",
    "swell",
    "thicken",
    "thickness_mechanism",
    "thin",
    "to_uint8",
    "upscale",
]
