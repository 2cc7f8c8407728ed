"""The ``reidkit`` command line. ``main(argv)`` runs in-process (tests call it directly).

Subcommands: ``train``, ``eval``, ``extract``, ``search``, ``models``, ``datasets``, ``demo``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ---------------------------------------------------------------------------- helpers
def _split_sets(items: list[str]) -> tuple[list[str], dict]:
    """``--set`` items: ``section.key=value`` are config overrides, bare ``key=value`` dataset options."""
    from .engine.config import parse_yaml

    overrides, options = [], {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        if "." in key:
            overrides.append(item)
        else:
            options[key] = parse_yaml(raw)
    return overrides, options


def _load_model_and_config(args):
    """Model (eval mode) and :class:`Config` from ``--checkpoint`` or ``--model/--pretrained``."""
    from .engine.checkpoint import model_from_checkpoint
    from .engine.config import apply_overrides, config_from_dict
    from .models import create_model

    overrides, options = _split_sets(getattr(args, "set", []))
    if args.checkpoint:
        model, ckpt = model_from_checkpoint(args.checkpoint)
        cfg_dict = ckpt.get("config", {})
    elif args.model:
        model = create_model(args.model, num_classes=0, pretrained=args.pretrained).eval()
        cfg_dict = {}
    else:
        raise SystemExit("give --checkpoint CKPT, or --model NAME [--pretrained PATH] for an untrained model")
    cfg = config_from_dict(apply_overrides(cfg_dict, overrides))
    return model, cfg, options


def _eval_dataset(args, cfg, options):
    """The dataset named on the command line, else the config's evaluation dataset."""
    from .data import create_dataset

    data = cfg.data
    cfg_name, cfg_root, cfg_opts = (
        (data.eval_name, data.eval_root, data.eval_options) if data.eval_name else (data.name, data.root, data.options)
    )
    name = args.dataset or cfg_name
    root = args.root if args.root is not None else (cfg_root if name == cfg_name else None)
    base_opts = dict(cfg_opts) if name == cfg_name else {}
    return create_dataset(name, root=root, **{**base_opts, **options})


def _device(args):
    from .engine.runtime import resolve_device

    return resolve_device(getattr(args, "device", "auto"))


def _list_images(folder: str) -> list[str]:
    root = Path(folder)
    if not root.is_dir():
        raise SystemExit(f"--gallery {folder!r} is not a directory")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise SystemExit(f"--gallery {folder!r} holds no images ({', '.join(IMAGE_EXTS)})")
    return paths


# ---------------------------------------------------------------------------- subcommands
def cmd_train(args) -> int:
    from .engine.config import load_config
    from .engine.trainer import Trainer

    cfg = load_config(args.config, args.set)
    out = args.output or str(Path("runs") / Path(args.config).stem)
    Trainer(cfg, out, resume=args.resume).fit()
    return 0


def cmd_eval(args) -> int:
    from .engine.evaluate import evaluate_model

    model, cfg, options = _load_model_and_config(args)
    dataset = _eval_dataset(args, cfg, options)
    print(dataset)
    result = evaluate_model(model, dataset, cfg, _device(args))
    metrics = result.as_dict()
    print("  ".join(f"{k}={100 * v:.2f}%" for k, v in metrics.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"dataset": dataset.name, **metrics}, indent=2))
    return 0


def cmd_extract(args) -> int:
    from .engine.evaluate import extract_split

    model, cfg, options = _load_model_and_config(args)
    dataset = _eval_dataset(args, cfg, options)
    device = _device(args)
    parts = {s: extract_split(model, dataset, s, cfg, device) for s in args.splits}
    paths = [s.img_path for split in args.splits for s in getattr(dataset, split)]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        features=torch.cat([p.features for p in parts.values()]).numpy(),
        pids=np.concatenate([p.pids for p in parts.values()]),
        camids=np.concatenate([p.camids for p in parts.values()]),
        paths=np.asarray(paths),
        splits=np.asarray([s for s in args.splits for _ in getattr(dataset, s)]),
    )
    print(f"wrote {len(paths)} features of {', '.join(args.splits)} to {out}")
    return 0


def _parse_ids(path: str, pattern: re.Pattern) -> int | None:
    m = pattern.search(Path(path).name)
    return int(m.group("pid")) if m else None


def cmd_search(args) -> int:
    from .data import read_image
    from .data.loader import eval_loader
    from .data.transforms import TransformConfig, build_transforms
    from .evaluation import compute_distance_matrix
    from .evaluation.features import extract_features
    from .visualize import ranked_list_grid

    model, cfg, _ = _load_model_and_config(args)
    gallery = _list_images(args.gallery)
    queries = list(args.query)
    transform = build_transforms(TransformConfig(height=cfg.data.height, width=cfg.data.width), train=False)
    samples = [(p, -1, -1) for p in queries + gallery]
    feats = extract_features(model, eval_loader(samples, read_image, transform, num_workers=0), _device(args)).features
    feats = torch.nn.functional.normalize(feats, dim=1) if cfg.eval.normalize else feats
    dist = compute_distance_matrix(feats[: len(queries)], feats[len(queries) :], metric=cfg.eval.metric)
    k = min(args.topk, len(gallery))
    pattern = re.compile(args.pattern)
    rows = []
    for qi, qpath in enumerate(queries):
        order = torch.argsort(dist[qi], stable=True)[:k].tolist()
        qpid = _parse_ids(qpath, pattern)
        print(f"query {qpath}")
        matches = []
        for rank, gi in enumerate(order, start=1):
            gpid = _parse_ids(gallery[gi], pattern)
            matches.append(None if qpid is None or gpid is None else gpid == qpid)
            print(f"  {rank:3d}  {dist[qi, gi].item():.4f}  {gallery[gi]}")
        rows.append((read_image(qpath), [read_image(gallery[i]) for i in order], [dist[qi, i].item() for i in order], matches))
    out = ranked_list_grid(rows, args.output)
    print(f"wrote {out}")
    return 0


def cmd_models(args) -> int:
    from .models import list_models

    print("\n".join(list_models(args.pattern)))
    return 0


def cmd_datasets(args) -> int:
    from .data import list_datasets

    print("\n".join(list_datasets(args.pattern)))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.output, minutes=args.minutes)
    return 0


def cmd_actmap(args) -> int:
    """Activation maps of one backbone stage over input images (AMSFL Fig. 3), as a PNG grid."""
    from .actmap import actmap_grid, activation_maps
    from .data import read_image
    from .data.transforms import TransformConfig, build_transforms

    model, cfg, _ = _load_model_and_config(args)
    device = _device(args)
    pictures = [read_image(p) for p in args.images]
    transform = build_transforms(TransformConfig(height=cfg.data.height, width=cfg.data.width), train=False)
    batch = torch.stack([transform(img) for img in pictures]).to(device)  # (B, 3, H, W)
    stage = args.stage if args.stage is not None else len(model.backbone.out_channels)
    try:
        maps = activation_maps(model.to(device), batch, stage)  # (B, H, W)
    except ValueError as err:
        raise SystemExit(f"reidkit actmap: error: {err}") from None
    out = actmap_grid(pictures, maps.cpu(), args.output)
    print(f"wrote {out} (stage {stage})")
    return 0


# ---------------------------------------------------------------------------- parser
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="a reidkit checkpoint (last.pt of a run)")
    p.add_argument("--model", help="evaluate an untrained registered model instead of a checkpoint")
    p.add_argument("--pretrained", help="with --model: local state dict for the backbone")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="dataset option (split_id=3, pattern=...) or config override (eval.metric=cosine)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reidkit", description="Person re-identification toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("--output", help="run directory (default runs/<config name>)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="CMC rank-k, mAP and mINP on a dataset's query/gallery")
    _add_model_args(p)
    p.add_argument("--dataset", help="registered dataset (default: the checkpoint's evaluation dataset)")
    p.add_argument("--root", help="dataset folder")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("extract", help="write features with paths, pids and camids to an .npz file")
    _add_model_args(p)
    p.add_argument("--dataset")
    p.add_argument("--root")
    p.add_argument("--splits", nargs="+", default=["query", "gallery"], choices=["train", "query", "gallery"])
    p.add_argument("--output", required=True, help=".npz file to write")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("search", help="rank a folder of gallery images for query images")
    _add_model_args(p)
    p.add_argument("--gallery", required=True, help="folder of gallery images (searched recursively)")
    p.add_argument("--query", required=True, nargs="+", help="query image file(s)")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--output", default="search_result.png", help="PNG grid to write")
    p.add_argument(
        "--pattern", default=r"^(?P<pid>-?\d+)_c(?P<camid>\d+)",
        help="regex with a pid group to mark true matches in the picture (Market-style by default)",
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("datasets", help="list registered datasets")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("demo", help="train briefly on the synthetic dataset, evaluate, draw a ranked list")
    p.add_argument("--output", default="runs/demo", help="run directory")
    p.add_argument("--minutes", type=float, default=None, help="training budget (default: the recipe's)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("actmap", help="activation maps of a backbone stage over images (PNG grid)")
    _add_model_args(p)
    p.add_argument("--images", required=True, nargs="+", help="image file(s)")
    p.add_argument("--stage", type=int, default=None, help="1-based backbone stage (default: the last)")
    p.add_argument("--output", default="actmap.png", help="PNG grid to write")
    p.set_defaults(func=cmd_actmap)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from .data import DatasetError, ImageReadError
    from .engine.checkpoint import CheckpointError
    from .engine.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, ImageReadError, CheckpointError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"reidkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
