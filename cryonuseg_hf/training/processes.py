"""The processes of a training run: one, or several under ``accelerate launch`` (distributed data parallel).

``accelerate launch`` starts the same command once per GPU (or CPU process); :func:`~cryonuseg_hf.training.loop.
fit_segformer` then trains one model with all of them. Started without the launcher, a run has one process and
trains exactly as it always did, to the same weights bit for bit. Under the launcher:

- each process draws its own crops and augmentations: process 0 the streams a run of one process draws, process
  k > 0 streams seeded with ``(seed, stream, k)`` (:func:`process_seeds`);
- the gradients are averaged over the processes at every step (``DistributedDataParallel``, set up by
  ``accelerate``), so the weights stay the same in every process; a step trains on ``processes x batch_size``
  crops, and ``steps`` counts steps, not crops;
- decisions that hang on a clock (when to save the training state, where a ``max_seconds`` budget cuts the
  schedule) are the main process's, shared with the others (:func:`agree`), so no process waits at a
  collective that another one skips;
- only the main process writes files (training state, checkpoints, records; :func:`main_process`); the training
  state keeps every process's random streams and losses, and resumes with as many processes as saved it.

The precision comes from the recipe (``--bf16``; bf16 autocast always on a GPU), never from ``accelerate``'s
``--mixed_precision``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np

PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
"""How long a process waits for the others at a collective. Between two models of a run (the folds of a CV) the
main process alone tunes the post-processing and predicts the held-out tiles while the others wait for it."""


def start_accelerator(device: str) -> Any:
    """The ``accelerate.Accelerator`` of this process for a resolved device (``"cpu"`` or ``"cuda"``).

    Its ``num_processes`` is 1 without the launcher; under it, its ``device`` is this process's GPU (or the CPU).
    """
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    return Accelerator(
        cpu=device == "cpu",
        mixed_precision="no",  # the recipe's autocast decides, in one place (loop.py)
        kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)],
    )


def main_process() -> bool:
    """Whether this process writes the run's files: the only process of a plain run, process 0 under
    ``accelerate launch``."""
    from accelerate import PartialState

    return PartialState().is_main_process


def process_seeds(seed: int, stream: int, process: int) -> tuple[list[int], int]:
    """The seeds of one process's crop stream (numpy) and augmentation stream (torch).

    Process 0 keeps the seeds of a run of one process, so a plain run draws what it always drew.

    >>> process_seeds(0, 3, 0)
    ([0, 3], 3)
    >>> process_seeds(0, 3, 1)[0], process_seeds(0, 3, 1) != process_seeds(0, 3, 2)
    ([0, 3, 1], True)
    """
    if process == 0:
        return [seed, stream], seed * 1000 + stream
    return [seed, stream, process], int(np.random.SeedSequence([seed, stream, process]).generate_state(1)[0])


def agree(accelerator: Any, value: Any) -> Any:
    """The main process's ``value``, in every process (``value`` itself in a run of one process)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def gather(accelerator: Any, value: Any) -> list[Any]:
    """``value`` of every process, in process order (``[value]`` in a run of one process)."""
    if accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def mean_over_processes(accelerator: Any, values: Any) -> Any:
    """The element-wise mean of a tensor over the processes (the tensor itself in a run of one process)."""
    return values if accelerator.num_processes == 1 else accelerator.reduce(values, "mean")


def share_buffers(accelerator: Any, model: Any) -> None:
    """Every process's ``model`` gets the main process's buffers (batch-norm statistics).

    ``DistributedDataParallel`` copies them from the main process at the start of each forward pass, and each
    process then updates its own copy: after the last step (and in a weight average) they differ, and the main
    process's are the ones it saves.
    """
    if accelerator.num_processes == 1:
        return
    import torch.distributed

    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)
