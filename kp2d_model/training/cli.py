"""``kp2d-train``: train KeyPointNet from the command line (also ``ros2 run kp2d_ros train``).

    kp2d-train CONFIG [--data DIR] [--out DIR] [--resume CKPT | --init MODEL] [key=value ...]

CONFIG is a YAML path or a packaged name (``v0`` ... ``v4``, ``v2_resnet``). ``key=value`` overrides any
configuration key (``data.batch_size=4``, ``train.max_steps=100``, ``data.image_shape=[120,160]``).
With ``--resume`` CONFIG may be left out: the checkpoint's configuration is used. ``--init default`` (or a model
file) starts a new run from trained weights: ``kp2d-train default_model --init default --data my_footage/``
fine-tunes the bundled default model on one's own images. Multi-GPU / multi-process:
``torchrun --nproc_per_node N -m kp2d_model.training.cli CONFIG ...``.

Exit status: 0 done, 1 training error (out of memory, non-finite loss, unreadable checkpoint), 2 bad
configuration or data, 130 stopped by Ctrl-C / SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from kp2d_model.checkpoint import CheckpointError, default_checkpoint_path
from kp2d_model.data import DataError
from kp2d_model.training.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_search_dirs,
    config_to_dict,
    load_config,
)

__all__ = ["main", "build_parser"]

PROGRAM = "kp2d-train"
EXIT_TRAINING_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Train KeyPointNet (KP2D) on a folder of images. Configs: "
        + ", ".join(str(d) for d in config_search_dirs()),
        epilog="Example: kp2d-train v4 --data /data/coco/train2017 --out runs/v4 data.batch_size=4",
    )
    parser.add_argument(
        "items",
        nargs="*",
        metavar="CONFIG | key=value",
        help="a config YAML path or name (v0..v4, v2_resnet), then key=value overrides (e.g. data.batch_size=4)",
    )
    parser.add_argument("--data", help="image folder (searched recursively) or list file; sets data.path")
    parser.add_argument("--out", help="run folder for checkpoints and logs (default: runs/<config>-<time>)")
    parser.add_argument("--resume", help="trainer checkpoint to continue from (e.g. runs/x/checkpoints/last.pt)")
    parser.add_argument(
        "--init",
        help="start a new run from a model's weights (fine-tuning): 'default' (the bundled default model, with "
        "the default_model config), a released KP2D .ckpt, a .safetensors or a trainer .pt",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return parser


def _split_items(items: Sequence[str]) -> tuple[str | None, list[str]]:
    names = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    if len(names) > 1:
        raise ConfigError(f"expected one CONFIG and key=value overrides, got several configs: {names}")
    return (names[0] if names else None), overrides


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """The configuration from CONFIG (or the resumed checkpoint), --data and overrides; and a run name."""
    name, overrides = _split_items(args.items)
    if name is None and args.resume is None:
        raise ConfigError("no CONFIG given: name a config (v0..v4, v2_resnet) or a YAML file, or --resume a checkpoint")
    if name is None:
        from kp2d_model.training.checkpointing import read_training_checkpoint

        state = read_training_checkpoint(args.resume)
        config = apply_overrides(config_from_dict(dict(state["config"]), f"{args.resume} (config)"), overrides)
        run_name = Path(args.resume).stem
    else:
        config = load_config(name, overrides)
        run_name = Path(name).stem
    if args.data is not None:
        config.data.path = str(args.data)
    return config, run_name


def _default_out_dir(args: argparse.Namespace, run_name: str) -> Path:
    if args.out:
        return Path(args.out)
    if args.resume:
        checkpoint = Path(args.resume).resolve()
        return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return Path("runs") / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def unwritable_folder_reason(folder: Path) -> str | None:
    """Why ``folder`` cannot be created or written (None: it can); creates it when missing."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def missing_folders(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path (itself included, innermost first) that do not exist yet."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_if_empty(folders: Sequence[Path]) -> None:
    """Remove the given folders (innermost first) where they are still empty: a run refused for its input
    leaves no empty ``runs/NAME-TIME`` folder behind."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (the run wrote something), or already gone: keep it
            return


def _error(message: str) -> None:
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        config, run_name = resolve_config(args)
    except (ConfigError, CheckpointError) as error:
        _error(str(error))
        return EXIT_USAGE
    if args.quiet:
        config.log.progress = False
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0
    if not config.data.path:
        _error("no training images: give --data DIR (an image folder or a list file) or data.path=...")
        return EXIT_USAGE
    init = None
    if args.init is not None:
        init = default_checkpoint_path() if args.init == "default" else Path(args.init)
        if args.resume is not None:
            _error("give --resume (continue a run) or --init (start a new run from a model), not both")
            return EXIT_USAGE
        if not init.is_file():
            _error(f"--init {init}: no such file")
            return EXIT_USAGE

    import torch.distributed as dist

    from kp2d_model.training.trainer import Trainer, TrainingError, setup_distributed

    out_dir = _default_out_dir(args, run_name)
    created_folders = missing_folders(out_dir.absolute())
    problem = unwritable_folder_reason(out_dir)
    if problem:
        _error(f"cannot write the run folder {out_dir} (--out): {problem}")
        return EXIT_USAGE
    context = None
    try:
        context = setup_distributed(config.train.device)
        logging.basicConfig(
            level=logging.WARNING if args.quiet or not context.is_main else logging.INFO,
            format=f"{PROGRAM}: %(message)s",
        )
        trainer = Trainer(config, out_dir, resume=args.resume, context=context, init=init)
        result = trainer.fit()
        if context.distributed:  # every rank done (rank 0 exports and saves last) before the group is torn down:
            dist.barrier()  # a rank tearing gloo down while another was busy aborted once in CI (std::terminate)
    except (ConfigError, DataError) as error:
        _error(str(error))
        if context is None or context.is_main:
            remove_if_empty(created_folders)
        return EXIT_USAGE
    except (TrainingError, CheckpointError) as error:
        _error(str(error))
        return EXIT_TRAINING_ERROR
    except KeyboardInterrupt:
        _error("aborted by a second Ctrl-C; nothing saved since the last checkpoint")
        return EXIT_INTERRUPTED
    finally:
        if context is not None and context.distributed and dist.is_initialized():
            dist.destroy_process_group()
    if context.is_main:
        if result.interrupted:
            print(
                f"{PROGRAM}: stopped at step {result.steps}; checkpoint saved to {result.checkpoint}. "
                f"Continue with: {PROGRAM} --resume {result.checkpoint}",
                file=sys.stderr,
            )
        else:
            print(
                f"{PROGRAM}: done, {result.steps} steps. Model: {result.exported_model}; "
                f"checkpoint: {result.checkpoint}"
            )
        if result.skipped_images:
            print(f"{PROGRAM}: {result.skipped_images} unreadable or too small image(s) were skipped", file=sys.stderr)
    return EXIT_INTERRUPTED if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
