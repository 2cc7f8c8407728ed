"""``reidkit eval`` and ``reidkit extract``."""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from ._common import (
    add_dataset_args,
    add_model_args,
    add_ranking_args,
    device,
    eval_dataset,
    load_model_and_config,
    output_file,
    positive_int,
)


def cmd_eval(args) -> int:
    from ..engine.evaluate import evaluate_model
    from ..fileio import atomic_write_text, ensure_writable_file

    if args.json:
        ensure_writable_file(args.json, "--json")  # before the work, not after it
    model, cfg = load_model_and_config(args)
    dataset = eval_dataset(args, cfg)
    print(dataset)
    result = evaluate_model(model, dataset, cfg, device(args))
    metrics = result.as_dict()
    print("  ".join(f"{k}={100 * v:.2f}%" for k, v in metrics.items()))
    if getattr(result, "std", None):
        print(f"single-gallery-shot, {result.repeats} draws; std: " +
              "  ".join(f"{k}={100 * v:.2f}" for k, v in result.std.items()))
        metrics = {**metrics, "std": result.std, "repeats": result.repeats}
    if args.json:
        atomic_write_text(args.json, json.dumps({"dataset": dataset.name, **metrics}, indent=2))
    return 0


def cmd_extract(args) -> int:
    from ..engine.evaluate import extract_split
    from ..evaluation.features import last_backend
    from ..fileio import atomic_write, ensure_writable_file

    ensure_writable_file(args.output, "--output")
    model, cfg = load_model_and_config(args)
    dataset = eval_dataset(args, cfg)
    run_on = device(args)
    parts = {s: extract_split(model, dataset, s, cfg, run_on) for s in args.splits}
    print(f"extract: backend {last_backend()}")
    pids = [_split_pids(dataset, s) for s in args.splits]
    arrays = dict(
        features=torch.cat([p.features for p in parts.values()]).numpy(),
        pids=np.concatenate([np.asarray(p, dtype=np.int64) for p in pids]),
        camids=np.concatenate([p.camids for p in parts.values()]),
        paths=np.asarray([x.img_path for s in args.splits for x in getattr(dataset, s)]),
        splits=np.asarray([s for s in args.splits for _ in getattr(dataset, s)]),
    )
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(args.output, lambda handle: handle.write(buffer.getvalue()))
    print(f"wrote {len(arrays['paths'])} features of {', '.join(args.splits)} to {args.output}")
    return 0


def _split_pids(dataset, split: str) -> list[int]:
    """The pids of a split as in the files (training labels are relabelled inside reidkit)."""
    return dataset.original_train_pids() if split == "train" else [s.pid for s in getattr(dataset, split)]


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="CMC rank-k, mAP and mINP on a dataset's query/gallery")
    add_model_args(p)
    add_dataset_args(p)
    add_ranking_args(p)
    p.add_argument(
        "--single-shot", type=positive_int, metavar="REPEATS",
        help="single-gallery-shot: one random gallery image per identity, REPEATS seeded draws averaged",
    )
    p.add_argument("--json", type=output_file(".json"), help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("extract", help="write features with paths, pids and camids to an .npz file")
    add_model_args(p)
    add_dataset_args(p)
    p.add_argument("--splits", nargs="+", default=["query", "gallery"], choices=["train", "query", "gallery"])
    p.add_argument("--output", required=True, type=output_file(".npz"), help=".npz file to write")
    p.set_defaults(func=cmd_extract)
