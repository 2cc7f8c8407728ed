"""``reidkit search`` (rank a gallery folder for query images) and ``reidkit actmap``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ._common import (
    UsageError,
    add_model_args,
    add_ranking_args,
    device,
    list_images,
    load_model_and_config,
    name_pattern,
    output_file,
    positive_int,
    readable_images,
    transform_for,
)

PICTURE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _embed(model, paths: list[str], cfg, run_on) -> torch.Tensor:
    """``(N, D)`` float32 embeddings of image files (flip TTA and backend from ``cfg.eval``)."""
    from ..data import read_image
    from ..data.loader import eval_loader
    from ..evaluation.features import extract_features

    loader = eval_loader([(p, -1, -1) for p in paths], read_image, transform_for(cfg), num_workers=0)
    e = cfg.eval
    return extract_features(model, loader, run_on, amp=e.amp, channels_last=e.channels_last, flip=e.flip,
                            backend=e.backend).features


def _pid(path: str, pattern) -> int | None:
    match = pattern.search(Path(path).name)
    return int(match.group("pid")) if match else None


def cmd_search(args) -> int:
    from ..data import read_image
    from ..engine.evaluate import prepare_features, query_gallery_distances
    from ..fileio import atomic_write_text, ensure_writable_file
    from ..visualize import ranked_list_grid

    for path in filter(None, (args.output, args.json)):
        ensure_writable_file(path, "--output" if path == args.output else "--json")
    if args.index:
        from .index import search_index

        return search_index(args)
    if not args.gallery:
        raise UsageError("give --gallery DIR (a folder to rank) or --index IDX (a built index)")
    model, cfg = load_model_and_config(args)
    run_on = device(args)
    queries = list(args.query)
    for path in queries:
        read_image(path)  # a bad query is an error naming it, before the gallery is embedded
    gallery = readable_images(list_images(args.gallery), cfg.data.skip_unreadable, "--gallery")
    feats = _embed(model, queries + gallery, cfg, run_on)
    qf, gf = prepare_features(feats[: len(queries)], feats[len(queries) :], cfg)
    dist = query_gallery_distances(qf, gf, cfg)  # (Q, G), smaller is closer
    k = min(args.topk, len(gallery))
    rows, report = [], []
    for qi, qpath in enumerate(queries):
        order = torch.argsort(dist[qi], stable=True)[:k].tolist()
        qpid = _pid(qpath, args.pattern)
        print(f"query {qpath}")
        matches, listed = [], []
        for rank, gi in enumerate(order, start=1):
            gpid = _pid(gallery[gi], args.pattern)
            matches.append(None if qpid is None or gpid is None else gpid == qpid)
            listed.append({"rank": rank, "distance": dist[qi, gi].item(), "path": gallery[gi], "pid": gpid})
            print(f"  {rank:3d}  {dist[qi, gi].item():.4f}  {gallery[gi]}")
        report.append({"query": qpath, "pid": qpid, "matches": listed})
        rows.append((read_image(qpath), [read_image(gallery[i]) for i in order], [dist[qi, i].item() for i in order], matches))
    if args.json:
        atomic_write_text(args.json, json.dumps({"metric": cfg.eval.metric, "results": report}, indent=2))
    out = ranked_list_grid(rows, args.output)
    print(f"wrote {out}")
    return 0


def cmd_actmap(args) -> int:
    """Activation maps of one backbone stage over input images (AMSFL Fig. 3), as a PNG grid."""
    from ..actmap import actmap_grid, activation_maps
    from ..data import read_image
    from ..fileio import ensure_writable_file

    ensure_writable_file(args.output, "--output")
    model, cfg = load_model_and_config(args)
    run_on = device(args)
    if args.patches:
        return _patch_picture(model, cfg, args, run_on)
    if not hasattr(model, "backbone"):
        raise UsageError(f"actmap needs a PyTorch model with a backbone, got {type(model).__name__}")
    pictures = [read_image(p) for p in args.images]
    transform = transform_for(cfg)
    batch = torch.stack([transform(img) for img in pictures]).to(run_on)  # (B, 3, H, W)
    num_stages = len(model.backbone.out_channels)
    stage = args.stage if args.stage is not None else num_stages
    if stage > num_stages:
        raise UsageError(f"--stage {stage}: {type(model).__name__} has stages 1..{num_stages}")
    maps = activation_maps(model.to(run_on), batch, stage)  # (B, H, W)
    out = actmap_grid(pictures, maps.cpu(), args.output)
    print(f"wrote {out} (stage {stage})")
    return 0


def _patch_picture(model, cfg, args, run_on) -> int:
    """PAUL's learned patches outlined on the input images (the paper's Fig. 6)."""
    from ..data import read_image
    from ..fileio import save_picture
    from ..models.paul import PatchNet, draw_patches, patch_corners

    if not isinstance(model, PatchNet):
        raise UsageError(f"--patches needs a PAUL PatchNet model (paul_*), got {cfg.model.name!r}")
    pictures = [read_image(p) for p in args.images]
    transform = transform_for(cfg)
    batch = torch.stack([transform(img) for img in pictures]).to(run_on)  # (B, 3, H, W)
    with torch.no_grad():
        theta = model.to(run_on).eval().patch_thetas(batch)  # (B, M, 2, 3)
    size = (cfg.data.height, cfg.data.width)
    out = save_picture(draw_patches(pictures, patch_corners(theta.cpu(), *size), size), args.output)
    print(f"wrote {out} ({theta.shape[1]} patches per image)")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("search", help="rank a folder of gallery images for query images")
    add_model_args(p)
    add_ranking_args(p)
    p.add_argument("--gallery", help="folder of gallery images (searched recursively)")
    p.add_argument("--index", help="a gallery index folder (reidkit index build) instead of --gallery")
    p.add_argument("--force", action="store_true", help="with --index: accept another model than the index's")
    p.add_argument("--query", required=True, nargs="+", help="query image file(s)")
    p.add_argument("--topk", type=positive_int, default=10, help="matches listed per query (>= 1)")
    p.add_argument("--output", default="search_result.png", type=output_file(*PICTURE_EXTS), help="picture of the ranked lists")
    p.add_argument("--json", type=output_file(".json"), help="also write the ranked lists to this JSON file")
    p.add_argument(
        "--pattern", default=r"^(?P<pid>-?\d+)_c(?P<camid>\d+)", type=name_pattern,
        help="regex with a named group pid, to mark true matches (Market-style names by default)",
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("actmap", help="activation maps of a backbone stage over images (PNG grid)")
    add_model_args(p, extraction=False)
    p.add_argument("--images", required=True, nargs="+", help="image file(s)")
    p.add_argument("--stage", type=positive_int, default=None, help="1-based backbone stage (default: the last)")
    p.add_argument("--patches", action="store_true", help="draw a PAUL model's learned patches instead (Fig. 6)")
    p.add_argument("--output", default="actmap.png", type=output_file(*PICTURE_EXTS), help="picture to write")
    p.set_defaults(func=cmd_actmap)
