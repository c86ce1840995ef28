"""Where a result was made: one description of the machine for every results file."""

from __future__ import annotations


def machine_description(device: str = "cpu") -> str:
    """The CPU model (from ``lscpu``), the cores this process may use, and the GPU when ``device`` is CUDA.

    >>> machine_description().endswith("no GPU")
    True
    """
    import os
    import platform
    import subprocess

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), "")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = f"{model or platform.processor() or 'unknown CPU'}, {cores} cores"
    if device.startswith("cuda"):
        import torch

        return f"{cpu}, GPU {torch.cuda.get_device_name(0)}"
    return f"{cpu}, no GPU"


def load_words(before: float, after: float) -> str:
    """How busy the machine was during a timed run, from the 1-minute load averages before and after it.

    A load below 0.5 before the run is taken as nothing else running then; the run's own threads raise it after.

    >>> load_words(0.13, 0.33)
    'a quiet machine (load average 0.13 before, 0.33 after)'
    >>> load_words(2.09, 2.0)
    'a machine shared with other jobs (load average 2.09 before, 2.00 after)'
    """
    state = "a quiet machine" if before < 0.5 else "a machine shared with other jobs"
    return f"{state} (load average {before:.2f} before, {after:.2f} after)"
