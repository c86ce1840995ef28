"""Training under ``accelerate launch``: two CPU processes (gloo) train a tiny SegFormer together.

One launch runs a script in both processes: a straight run, the same run interrupted and resumed, and the
``pretrain`` command. Each process writes what it ended with; the test compares them.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

TINY = dict(
    variant="tiny", input_scale=1.0, batch_size=2, crop=64, warmup=2, steps=6, threads=1, device="cpu"
)

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import numpy as np
    import torch.distributed

    from test_distributed_training import TINY, digest, tiny_data
    from cryonuseg_hf.cli import main
    from cryonuseg_hf.training import loop
    from cryonuseg_hf.training.config import TrainConfig
    from cryonuseg_hf.training.loop import fit_segformer

    work = Path(sys.argv[1])
    images, classes = tiny_data()
    config = TrainConfig(**TINY, ema_decay=0.5, save_every=0)
    straight, record = fit_segformer(config, images, classes, [0, 1, 2], progress=False)

    real, calls = loop.augment, []

    def failing(x, generator):  # every process is stopped in step 5
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(x, generator)

    loop.augment = failing
    try:
        fit_segformer(config, images, classes, [0, 1, 2], progress=False, state_path=work / "run.state.pt")
    except KeyboardInterrupt:
        pass
    loop.augment = real
    resumed, resumed_record = fit_segformer(
        config, images, classes, [0, 1, 2], progress=False, state_path=work / "run.state.pt"
    )
    code = main(sys.argv[2:])
    rank = torch.distributed.get_rank()
    (work / f"process{rank}.json").write_text(json.dumps({
        "world": torch.distributed.get_world_size(), "straight": digest(straight), "resumed": digest(resumed),
        "record": record, "resumed_record": resumed_record, "code": code,
    }))
    """
)


def tiny_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three 128x128 images of purple disks on pink and their class maps (0 background, 1 nucleus)."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    classes = np.zeros((3, 128, 128), np.uint8)
    for t in range(3):
        for _ in range(12):
            rr, cc = disk(tuple(rng.integers(8, 120, size=2)), rng.integers(4, 8), shape=(128, 128))
            classes[t, rr, cc] = 1
    colour = np.where(classes[..., None] > 0, [90, 50, 140], [235, 185, 210])
    images = np.clip(colour + rng.normal(0, 8, colour.shape), 0, 255).astype(np.uint8)
    return images, classes


def digest(model) -> str:
    """SHA-256 of every weight and buffer of a model, in order."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pretraining_folder(root):
    """Two 512x512 images with their instance labels, as ``pretrain --data`` reads a folder."""
    from PIL import Image
    from skimage.draw import disk

    rng = np.random.default_rng(1)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for k in range(2):
        labels = np.zeros((512, 512), np.uint16)
        for label in range(1, 40):
            rr, cc = disk(tuple(rng.integers(10, 502, size=2)), rng.integers(5, 10), shape=labels.shape)
            labels[rr, cc] = label
        image = np.where(labels[..., None] > 0, [90, 50, 140], [235, 185, 210]).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"tile{k}.png")
        Image.fromarray(labels).save(root / "labels" / f"tile{k}.png")
    return root


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """What each of the two launched processes ended with (one launch for every test of this module)."""
    import os
    from pathlib import Path

    work = tmp_path_factory.mktemp("launch")
    (work / "script.py").write_text(SCRIPT)
    data = _pretraining_folder(work / "data")
    pretrain = ["pretrain", "--data", str(data), "--out", str(work / "pretrained"), "--variant", "tiny"]
    pretrain += ["--input-scale", "1", "--steps", "3", "--crop", "64", "--batch-size", "2", "--threads", "1"]
    pretrain += ["--device", "cpu"]
    launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [*launch, str(work / "script.py"), str(work), *pretrain],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ended = [json.loads((work / f"process{k}.json").read_text()) for k in range(2)]
    return work, ended, done.stdout


def test_two_processes_end_with_identical_weights(two_processes):
    from cryonuseg_hf.training.config import TrainConfig
    from cryonuseg_hf.training.loop import fit_segformer

    _, ended, _ = two_processes
    assert [e["world"] for e in ended] == [2, 2]
    assert ended[0]["straight"] == ended[1]["straight"]
    assert ended[0]["record"]["processes"] == 2 and ended[0]["record"]["steps"] == 6
    # the loss curve is the mean over both processes, the same in each
    assert ended[0]["record"]["loss_curve"] == ended[1]["record"]["loss_curve"]
    # both processes' crops shaped the weights: one process alone ends elsewhere
    images, classes = tiny_data()
    config = TrainConfig(**TINY, ema_decay=0.5, save_every=0)
    alone, record = fit_segformer(config, images, classes, [0, 1, 2], progress=False)
    assert record["processes"] == 1 and digest(alone) != ended[0]["straight"]


def test_interrupted_two_process_run_resumes_to_the_same_weights(two_processes):
    work, ended, _ = two_processes
    for process in ended:
        assert process["resumed"] == process["straight"]
        assert process["resumed_record"]["loss_curve"] == process["record"]["loss_curve"]
    state = torch.load(work / "run.state.pt", weights_only=False)  # the finished run's last state
    assert state["processes"] == 2 and len(state["process_streams"]) == 2


def test_pretrain_command_under_the_launcher_writes_once(two_processes):
    work, ended, stdout = two_processes
    assert [e["code"] for e in ended] == [0, 0]
    record = json.loads((work / "pretrained" / "pretrain.json").read_text())
    assert record["processes"] == 2 and record["steps"] == 3
    assert (work / "pretrained" / "model.safetensors").is_file()
    assert not (work / "pretrained.state.pt").exists()
    assert stdout.count("pretrained on") == 1  # the main process speaks for the run


def test_a_state_of_another_number_of_processes_is_not_resumed(two_processes, tmp_path):
    from cryonuseg_hf.training.config import TrainConfig
    from cryonuseg_hf.training.loop import fit_segformer

    work, _, _ = two_processes
    images, classes = tiny_data()
    config = TrainConfig(**TINY, ema_decay=0.5, save_every=0)
    with pytest.raises(ValueError, match="run.state.pt: .* 2 process.*--num_processes 2"):
        fit_segformer(config, images, classes, [0, 1, 2], progress=False, state_path=work / "run.state.pt")
