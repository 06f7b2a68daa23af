"""Export a trainer checkpoint as the bundled default model, with its provenance.

    .venv/bin/python scripts/export_default_model.py RUN_DIR/checkpoints/last.pt \
        --data data/train_photos --metrics RUN_DIR/metrics.jsonl

Writes ``kp2d_model/weights/kp2d_default.safetensors`` (project format: float32 weights + JSON metadata):
model configuration, the training configuration, step/epoch, the training photos (name + sha256), the final
loss terms (mean of the last logged steps), the git commit of the code that trained it, and the command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from kp2d_model.checkpoint import build_keypoint_net, default_checkpoint_path, read_checkpoint, save_keypoint_net


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _final_loss(metrics_path: Path, last_n: int) -> dict[str, float]:
    """Mean of each loss term over the last ``last_n`` logged steps of a trainer's metrics.jsonl."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if "total" in row][-last_n:]
    keys = ("total", "location", "descriptor", "score", "io", "recall")
    return {key: sum(row[key] for row in rows) / len(rows) for key in keys if rows and key in rows[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="trainer checkpoint (.pt) written by kp2d-train")
    parser.add_argument("--data", type=Path, required=True, help="the training photo folder (for the data list)")
    parser.add_argument("--metrics", type=Path, help="the run's metrics.jsonl (for the final loss)")
    parser.add_argument("--out", type=Path, default=default_checkpoint_path())
    parser.add_argument("--command", default="", help="the kp2d-train command line, recorded verbatim")
    args = parser.parse_args(argv)

    loaded = read_checkpoint(args.checkpoint)
    if loaded.format != "kp2d-train-v1":
        parser.error(f"{args.checkpoint} is a {loaded.format} file, not a kp2d-train checkpoint")
    net = build_keypoint_net(loaded.model_config)
    net.load_state_dict(loaded.state_dict, strict=True)

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    photos = sorted(p for p in args.data.iterdir() if p.is_file())
    provenance = {
        "trained_with": "kp2d-train",
        "command": args.command,
        "code_commit": commit,
        "step": loaded.extra.get("step"),
        "epoch": loaded.extra.get("epoch"),
        "config": loaded.config,
        "data": {
            "description": "Debian opencv-doc examples + lomiri-wallpapers-16.04 (scripts/stage_training_photos.sh)",
            "photos": [{"name": p.name, "sha256": _sha256(p)} for p in photos],
        },
        "final_loss": _final_loss(args.metrics, last_n=50) if args.metrics else {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_keypoint_net(args.out, net, loaded.model_config, provenance)
    size_mb = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.1f} MB) from step {provenance['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
