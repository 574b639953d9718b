"""Test-wide settings: trackers offline, few threads, quiet Lightning."""

import logging
import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# one intra-op thread, also for train() / evaluate(), which follow an OMP_NUM_THREADS that is set (imcf.threads)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # measured: small models train several times faster on 1 thread than 2 here
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one intra-op thread (train() / evaluate() may set another: restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests need CUDA: where there is none they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker); none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
