"""``reidkit train`` and ``reidkit demo``."""

from __future__ import annotations

from pathlib import Path

from ._common import add_config_overrides, positive_float, positive_int


def cmd_train(args) -> int:
    from ..engine.config import load_config
    from ..engine.distributed import from_environment
    from ..engine.trainer import Trainer

    if args.nproc and args.nproc > 1 and not from_environment().active:
        return _launch(args)
    cfg = load_config(args.config, args.set)
    out = args.output or str(Path("runs") / Path(args.config).stem)
    try:
        Trainer(cfg, out, resume=args.resume, overwrite=args.overwrite).fit()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _launch(args) -> int:
    """``reidkit train ... --nproc N``: the same command under ``torchrun --standalone``."""
    import subprocess
    import sys

    argv, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            argv.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "reidkit", *argv]
    return subprocess.run(command, check=False).returncode


def cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(args.output, minutes=args.minutes, overwrite=args.overwrite)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("--output", help="run directory (default runs/<config name>); must be new or empty")
    add_config_overrides(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the run files already in --output")
    p.add_argument(
        "--nproc", type=positive_int, default=None,
        help="train with N processes on this machine (torchrun --standalone; DDP, gloo on CPU, NCCL on GPUs)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="train briefly on the synthetic dataset, evaluate, draw a ranked list")
    p.add_argument("--output", default="runs/demo", help="run directory (resumed when it holds last.pt)")
    p.add_argument("--minutes", type=positive_float, default=None, help="training budget (default: the recipe's)")
    p.add_argument("--overwrite", action="store_true", help="replace the run files already in --output")
    p.set_defaults(func=cmd_demo)
