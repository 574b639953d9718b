"""imcf.memory: freed heap memory kept for the next batch (each case in a fresh process: mallopt is per process)."""

import json
import os
import subprocess
import sys

import pytest

from imcf.memory import user_heap_setting

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc only"
)

# 20 rounds of blocks of 4-24 MB allocated, written and freed in turn, as a network's activations are in a pass
# without autograd
PROBE = """
import json, resource, sys
import numpy as np
from imcf.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    for n in (1 << 22, 3 << 21, 1 << 20, 5 << 19):
        a = np.ones(n, dtype=np.float32)
        b = a * 2
        del a
        c = b + 1
        del b, c
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start}))
"""


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not user_heap_setting(k)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    """With glibc's defaults freed blocks go back to the OS and are faulted in again (measured: 61,223 minor page
    faults); kept, only the first round faults (1,546)."""
    default, kept = probe("default"), probe("keep")
    assert kept["applied"] is True
    assert default["faults"] > 20_000, default
    assert kept["faults"] < default["faults"] / 10, (kept, default)


USER_SETTINGS = [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}]


@pytest.mark.parametrize("env", USER_SETTINGS)
def test_a_users_heap_setting_takes_precedence(env: dict) -> None:
    got = probe("keep", **env)
    assert got["applied"] is False and got["faults"] > 20_000, got
