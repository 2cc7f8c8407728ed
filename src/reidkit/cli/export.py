"""``reidkit export``: a checkpoint or registered model to an ONNX file, checked for parity."""

from __future__ import annotations

import argparse

from ._common import (
    UsageError,
    add_dataset_args,
    add_model_args,
    eval_dataset,
    load_model_and_config,
    output_file,
    positive_int,
)


def cmd_export(args) -> int:
    from ..fileio import ensure_writable_file
    from ..onnx_export import compare_on_dataset, export_onnx

    ensure_writable_file(args.output, "--output")
    if args.model and args.model.lower().endswith(".onnx"):
        raise UsageError("--model names a registered model to export; it is already an .onnx file")
    if args.int8 and args.fp16:
        raise UsageError("give --fp16 or --int8, not both")
    if args.int8 and not args.calibration:
        raise UsageError("--int8 needs --calibration DIR (images for the activation ranges)")
    if args.calibration and not args.int8:
        raise UsageError("--calibration goes with --int8")
    if args.dataset and not args.int8:
        raise UsageError("--check-dataset / --dataset (the rank-1 / mAP check) goes with --int8")
    if args.dynamic_batch and args.batch_size:
        raise UsageError("give --dynamic-batch or --batch-size N, not both")
    model, cfg = load_model_and_config(args)
    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    report = export_onnx(
        model, args.output, input_size=(cfg.data.height, cfg.data.width), model_name=cfg.model.name,
        opset=args.opset, batch_size=None if args.dynamic_batch else (args.batch_size or 1), precision=precision,
        calibration=args.calibration, check_images=args.check_images, l2_normalize=args.l2_normalize,
    )
    print(report.summary())
    if args.int8 and args.dataset:
        from ..inference import load_onnx_model

        change = compare_on_dataset(model, load_onnx_model(report.path), eval_dataset(args, cfg), cfg)
        print(f"int8 vs torch fp32 on {args.dataset}: rank-1 {100 * change['rank1']:.2f}% "
              f"({100 * change['rank1_change']:+.2f}), mAP {100 * change['mAP']:.2f}% ({100 * change['mAP_change']:+.2f})")
    return 0


def opset_version(text: str) -> int:
    """argparse type: an ONNX opset the installed torch exporter writes (checked before exporting)."""
    from ..inference.convert import supported_opsets

    value = positive_int(text)
    low, high = supported_opsets("torchscript")
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} is not an opset this torch exports to (it writes {low} to {high})")
    return value


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint or registered model to ONNX (with a parity check)")
    add_model_args(p, extraction=False)
    p.add_argument("--output", required=True, type=output_file(".onnx"), help=".onnx file to write")
    p.add_argument(
        "--opset", type=opset_version,
        help="ONNX opset (default 17, or what an operator needs; one the installed torch exporter writes)",
    )
    p.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch dimension (default: fixed)")
    p.add_argument("--batch-size", type=positive_int, help="the fixed batch size (default 1)")
    p.add_argument("--fp16", action="store_true", help="float16 weights and activations (cosine >= 0.999 required)")
    p.add_argument("--int8", action="store_true", help="static int8 quantisation (needs --calibration)")
    p.add_argument("--calibration", help="with --int8: a folder of images for the activation ranges")
    p.add_argument("--check-images", help="folder of images for the parity check (default: synthetic images)")
    p.add_argument("--l2-normalize", action="store_true", help="L2-normalise the output inside the graph")
    add_dataset_args(p)  # --dataset: with --int8, print the rank-1 and mAP change on it
    p.add_argument(
        "--check-dataset", dest="dataset", default=argparse.SUPPRESS, metavar="DATASET",
        help="with --int8: the dataset to print the rank-1 and mAP change on (same as --dataset)",
    )
    p.set_defaults(func=cmd_export)
