"""``reidkit eval`` and ``reidkit extract``."""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from ._common import (
    UsageError,
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
    from ..fileio import atomic_write_text, ensure_writable_dir, ensure_writable_file

    reporting = bool(args.report or args.report_dir)
    if args.json:
        ensure_writable_file(args.json, "--json")  # before the work, not after it
    if args.report:
        ensure_writable_file(args.report, "--report")
    if args.report_dir:
        ensure_writable_dir(args.report_dir, "--report-dir")
    if reporting:
        _require_matplotlib()
    model, cfg = load_model_and_config(args)
    dataset = eval_dataset(args, cfg)
    print(dataset)
    if reporting:
        q, g, result = _evaluate_with_features(model, dataset, cfg, device(args))
    else:
        result = evaluate_model(model, dataset, cfg, device(args))
    metrics = result.as_dict()
    print("  ".join(f"{k}={100 * v:.2f}%" for k, v in metrics.items()))
    if getattr(result, "std", None):
        print(f"single-gallery-shot, {result.repeats} draws; std: " +
              "  ".join(f"{k}={100 * v:.2f}" for k, v in result.std.items()))
        metrics = {**metrics, "std": result.std, "repeats": result.repeats}
    if args.json:
        body = {"dataset": dataset.name, **metrics, "cmc": [float(v) for v in result.cmc]}
        atomic_write_text(args.json, json.dumps(body, indent=2))
    if reporting:
        _write_report(args, q, g, cfg, dataset, result)
    return 0


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--report / --report-dir need matplotlib: pip install 'reidkit[report]'") from None


def _evaluate_with_features(model, dataset, cfg, run_on):
    """What ``evaluate_model`` does, keeping the features for the report."""
    from ..engine.evaluate import check_finite, evaluate_features, extract_split

    q, g = extract_split(model, dataset, "query", cfg, run_on), extract_split(model, dataset, "gallery", cfg, run_on)
    check_finite(q, "query", dataset)
    check_finite(g, "gallery", dataset)
    return q, g, evaluate_features(q, g, cfg)


def _write_report(args, q, g, cfg, dataset, result) -> None:
    """``--report`` (one HTML file) and ``--report-dir`` (PNGs) of the query-gallery distances."""
    from ..report import build_report, write_report_html, write_report_pngs
    from ..report.build import distances_for

    distmat, what = distances_for(q, g, cfg)
    protocol = (f"single-gallery-shot, {result.repeats} draws (headline numbers); curves and tables: full gallery"
                if getattr(result, "std", None) else "Market-1501 rules, full gallery")
    source = args.checkpoint or (args.model + (f" + {args.pretrained}" if args.pretrained else ""))
    context = {"dataset": dataset.name, "model": f"{cfg.model.name} ({source})", "distance": f"{what}, smaller is closer",
               "protocol": protocol}
    report = build_report(distmat.numpy(), q.pids, g.pids, q.camids, g.camids, max_rank=cfg.eval.max_rank,
                          metrics=result.as_dict(), context=context)
    paths = dict(query_paths=[s.img_path for s in dataset.query], gallery_paths=[s.img_path for s in dataset.gallery],
                 load_image=dataset.load_image)
    for point in report.operating_points:
        print(f"verification: TPR {100 * point.tpr:.2f}% at FPR {point.target_fpr:g} (distance < {point.threshold:.4f})")
    if args.report:
        print(f"wrote {write_report_html(report, args.report, title=f'reidkit eval: {dataset.name}', **paths)}")
    if args.report_dir:
        written = write_report_pngs(report, args.report_dir, **paths)
        print(f"wrote {len(written)} pictures to {args.report_dir}")


def cmd_extract(args) -> int:
    from ..engine.evaluate import extract_split
    from ..evaluation.features import last_backend
    from ..fileio import atomic_write, ensure_writable_file

    from ..engine.distributed import init_distributed

    ctx, dist_device = init_distributed(args.device)  # under torchrun: embed 1/N per process, gather
    if ctx.is_main:
        ensure_writable_file(args.output, "--output")
    model, cfg = load_model_and_config(args)
    dataset = eval_dataset(args, cfg)
    run_on = dist_device or device(args)
    parts = {s: extract_split(model, dataset, s, cfg, run_on) for s in args.splits}
    if not ctx.is_main:
        return 0
    print(f"extract: backend {last_backend()}" + (f", {ctx.world_size} processes" if ctx.active else ""))
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
    p.add_argument("--json", type=output_file(".json"), help="also write the metrics and the CMC curve to this JSON file")
    p.add_argument("--report", type=output_file(".html"),
                   help="write a self-contained HTML report: CMC, pair distances, ROC with TPR at FPR 1e-2/1e-3/1e-4 "
                        "and their distance thresholds, worst queries, rank-1 per camera pair")
    p.add_argument("--report-dir", help="write the report's pictures as PNG files into this folder")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("extract", help="write features with paths, pids and camids to an .npz file")
    add_model_args(p)
    add_dataset_args(p)
    p.add_argument("--splits", nargs="+", default=["query", "gallery"], choices=["train", "query", "gallery"])
    p.add_argument("--output", required=True, type=output_file(".npz"), help=".npz file to write")
    p.set_defaults(func=cmd_extract)
