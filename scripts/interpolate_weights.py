"""Blend a fine-tuned KeyPointNet with the model it started from: weights (1 - alpha) * base + alpha * tuned.

Interpolating in weight space between a model and its own fine-tune (WiSE-FT, Wortsman et al. 2022) often keeps
part of the fine-tune's gain with less of its loss elsewhere; choose ``alpha`` on validation photos, never on
the benchmark you report. Both files must hold the same network (any format the library reads); floating-point
tensors (weights, BatchNorm statistics) are blended, integer ones (BatchNorm step counters) are taken from the
file with the larger share. The result is a project .safetensors with both inputs in its provenance (and, for a
trainer checkpoint, its training configuration and step).

    .venv/bin/python scripts/interpolate_weights.py runs/x/checkpoints/last.pt --alpha 0.7 --out blend.safetensors
    .venv/bin/kp2d-evaluate --checkpoint blend.safetensors --hpatches data/hpatches_val --resolution 320x240
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from kp2d_model.checkpoint import (
    CheckpointError,
    build_keypoint_net,
    check_state_dict,
    default_checkpoint_path,
    read_checkpoint,
    save_keypoint_net,
)


def interpolate_state_dicts(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` for every floating-point tensor; integer tensors from the larger
    share (``tuned`` when ``alpha >= 0.5``). Both dicts must have the same keys and shapes (checked by the caller)."""
    blended = {}
    for key, base_value in base.items():
        tuned_value = tuned[key]
        if base_value.is_floating_point():
            blended[key] = torch.lerp(base_value.float(), tuned_value.float(), alpha).to(base_value.dtype)
        else:
            blended[key] = (tuned_value if alpha >= 0.5 else base_value).clone()
    return blended


def interpolate_checkpoints(base_path: Path, tuned_path: Path, alpha: float, out_path: Path) -> None:
    """Read both checkpoints, check they hold the same network, write the blend to ``out_path``."""
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"--alpha must be in [0, 1] (the share of the fine-tuned weights), got {alpha}")
    base, tuned = read_checkpoint(base_path), read_checkpoint(tuned_path)
    if base.model_config != tuned.model_config:
        raise CheckpointError(
            f"{tuned_path} holds another network than {base_path}: model config {tuned.model_config} "
            f"vs {base.model_config}"
        )
    net = build_keypoint_net(base.model_config)
    check_state_dict(net, base.state_dict, base_path)
    check_state_dict(net, tuned.state_dict, tuned_path)
    net.load_state_dict(interpolate_state_dicts(base.state_dict, tuned.state_dict, alpha), strict=True)
    provenance = {
        "interpolated": {
            "alpha": alpha,
            "base": str(base_path),
            "tuned": str(tuned_path),
            "base_provenance": base.provenance,
            "tuned_provenance": tuned.provenance,
            "tuned_config": tuned.config,  # a trainer checkpoint's training configuration ({} for other formats)
            "tuned_step": tuned.extra.get("step"),
        }
    }
    save_keypoint_net(out_path, net, base.model_config, provenance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tuned", type=Path, help="the fine-tuned checkpoint (trainer .pt, .safetensors, .ckpt)")
    parser.add_argument("--alpha", type=float, required=True, help="share of the fine-tuned weights, 0..1")
    parser.add_argument("--base", type=Path, default=None, help="the model it started from (default: the bundled one)")
    parser.add_argument("--out", type=Path, required=True, help="the blended model (.safetensors)")
    args = parser.parse_args(argv)
    base_path = args.base if args.base is not None else default_checkpoint_path()
    try:
        interpolate_checkpoints(base_path, args.tuned, args.alpha, args.out)
    except ValueError as error:  # CheckpointError is one
        print(f"interpolate_weights: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # writing --out
        print(f"interpolate_weights: cannot write {args.out}: {error}", file=sys.stderr)
        return 1
    print(f"interpolate_weights: wrote {args.out} ({1 - args.alpha:g} x {base_path} + {args.alpha:g} x {args.tuned})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
