"""What a benchmark's result file records about its run — the command, the machine and the date — so that its page
(``python docs/generate_benchmarks.py``) can say how, where and when the numbers were measured."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path


def provenance(device: str = "cpu") -> dict:
    """``{"command", "machine", "date"}`` of this process: the script as run from the repository root with its
    arguments; the CPU (architecture, cores) or the GPU's name, and torch's version."""
    import torch

    script = Path(sys.argv[0]).resolve().relative_to(Path(__file__).resolve().parent.parent)
    command = shlex.join(["python", script.as_posix(), *sys.argv[1:]])
    if device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    else:
        machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU"
    return {"command": command, "machine": machine, "date": datetime.date.today().isoformat()}
