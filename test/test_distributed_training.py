"""Multi-process training with torchrun (gloo on the CPU): gradients are all-reduced, so every rank ends a
step with the same weights although each rank trained on different images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from kp2d_model.checkpoint import load_keypoint_net

pytestmark = pytest.mark.integration

RANK_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    import torch.distributed as dist
    from kp2d_model.training.config import load_config
    from kp2d_model.training.trainer import Trainer

    data, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = load_config("v4", [
        f"data.path={data}", "data.image_shape=[64,96]", "data.batch_size=2", "data.num_workers=0",
        f"train.max_steps={steps}", "train.device=cpu", "train.num_threads=1", "log.progress=false",
        "log.image_every=0", "train.checkpoint_every=0",
    ])
    trainer = Trainer(config, out)

    def parameter_digest():
        digest = hashlib.sha256()
        for net in (trainer.keypoint_net, trainer.io_net):
            for name, value in net.named_parameters():
                digest.update(name.encode())
                digest.update(value.detach().cpu().numpy().tobytes())
        return digest.hexdigest()

    trainer.sampler.set_epoch(0)
    first_batch = [index for _, index in list(trainer.sampler)[: config.data.batch_size]]
    before = parameter_digest()
    result = trainer.fit()
    rank = trainer.context.rank
    record = {
        "rank": rank,
        "world_size": trainer.context.world_size,
        "ddp": type(trainer.model).__name__,
        "first_batch": first_batch,
        "before": before,
        "after": parameter_digest(),
        "losses": [step["total"] for step in result.history],
        "steps": result.steps,
    }
    with open(f"{out}/rank{rank}.json", "w") as handle:
        json.dump(record, handle)
    dist.destroy_process_group()
    """
)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(8):
        image = np.full((120, 160, 3), 127, np.uint8)
        for _ in range(30):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.circle(image, tuple(int(v) for v in rng.integers(0, 120, 2)), int(rng.integers(3, 20)), color, -1)
        cv2.imwrite(str(folder / f"img{index}.png"), image)
    return folder


def test_torchrun_two_processes_keep_identical_weights_after_each_step(image_folder, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(script), str(image_folder), str(out), "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["ddp"] == "DistributedDataParallel" for r in ranks)
    assert all(r["steps"] == 2 and len(r["losses"]) == 2 for r in ranks)
    # Different data on each rank: different losses, so unsynchronised updates would differ ...
    assert set(ranks[0]["first_batch"]).isdisjoint(ranks[1]["first_batch"])
    assert ranks[0]["losses"] != ranks[1]["losses"]
    # ... yet after the steps both ranks hold the same parameters, and they did change.
    assert ranks[0]["before"] == ranks[1]["before"]
    assert ranks[0]["after"] == ranks[1]["after"]
    assert ranks[0]["after"] != ranks[0]["before"]
    # Rank 0 alone wrote the checkpoint and the exported model.
    assert load_keypoint_net(out / "checkpoints" / "last.pt") is not None
    assert load_keypoint_net(out / "keypoint_net.safetensors") is not None
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_cli_runs_under_torchrun(image_folder, tmp_path):
    out = tmp_path / "cli_run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "kp2d_model.training.cli", "v0", "--data", str(image_folder), "--out", str(out), "--quiet"]
    command += ["data.image_shape=[64,96]", "data.batch_size=2", "data.num_workers=0", "train.max_steps=1"]
    command += ["train.device=cpu", "log.image_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_keypoint_net(out / "keypoint_net.safetensors").kp2d_model_config["do_upsample"] is False
