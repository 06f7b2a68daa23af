"""Time one KP2D training step on this machine: augmentation, network forward, loss, backward.

    .venv/bin/python benchmarks/bench_loss.py --batch 8 --height 240 --width 320
    .venv/bin/python benchmarks/bench_loss.py --batch 4 --height 120 --width 160 --single-pass

Prints the best and the median wall-clock time over ``--repeats`` steps (after one warm-up step) of:
``augment`` (make_training_batch), ``network`` (two KeypointNet forward passes + backward of a dummy sum),
``step`` (kp2d_loss forward + backward of total, networks included), ``loss_share`` = best step - best network.
Random weights (KeypointNet with dropout, InlierNet), both in train mode, as in training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from kp2d_model.augmentation import AugmentationOptions, make_training_batch
from kp2d_model.image import normalize_image
from kp2d_model.losses import kp2d_loss
from kp2d_model.networks import InlierNet, KeypointNet


def _seconds(function, repeats: int) -> tuple[float, float]:
    """Best and median wall-clock seconds of ``function`` over ``repeats`` calls after one warm-up.

    The best time is the least disturbed by other processes sharing the CPU; the median shows the spread.
    """
    function()  # warm-up
    wall = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        wall.append(time.perf_counter() - start)
    return min(wall), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--single-pass", action="store_true", help="one forward pass of 2B images (not faithful)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for the nets")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    keypoint_net = KeypointNet(with_drop=True).to(device, memory_format=memory_format).train()
    io_net = InlierNet().to(device).train()
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(args.batch, 3, args.height, args.width, generator=generator, device=device)
    options = AugmentationOptions()
    batch = make_training_batch(images, options, generator)
    for key in ("image", "image_aug"):
        batch[key] = batch[key].contiguous(memory_format=memory_format)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def augment() -> None:
        make_training_batch(images, options, generator)
        sync()

    def network() -> None:
        keypoint_net.zero_grad(set_to_none=True)
        outputs = keypoint_net(normalize_image(batch["image_aug"])) + keypoint_net(normalize_image(batch["image"]))
        sum(output.float().mean() for output in outputs).backward()
        sync()

    def step() -> None:
        keypoint_net.zero_grad(set_to_none=True)
        io_net.zero_grad(set_to_none=True)
        kp2d_loss(keypoint_net, io_net, batch, single_pass=args.single_pass)["total"].backward()
        sync()

    result = {
        "batch": args.batch,
        "shape": [args.height, args.width],
        "threads": args.threads,
        "device": str(device),
        "single_pass": args.single_pass,
        "channels_last": args.channels_last,
    }
    for name, function in (("augment", augment), ("network", network), ("step", step)):
        result[f"{name}_best_s"], result[f"{name}_median_s"] = _seconds(function, args.repeats)
    result["loss_share_best_s"] = result["step_best_s"] - result["network_best_s"]
    print(json.dumps({key: round(value, 3) if isinstance(value, float) else value for key, value in result.items()}))


if __name__ == "__main__":
    main()
