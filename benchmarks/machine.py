"""What the benchmarks print beside their timings: the machine they ran on."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it (platform.processor() otherwise)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def write_json(path: str | Path, meta: dict[str, Any], results: Any) -> None:
    """Write {"meta": {date, cpu, **meta}, "results": results} to `path` (folders made as needed)."""
    out = {"meta": {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), **meta}, "results": results}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2))
