"""``reidkit index build|add|remove|info`` and ``reidkit search --index``: a persistent gallery.

The index remembers the model that built it (``IndexManifest.model_source``), so ``index add``
and ``search --index`` embed with the same model without being told again; giving another
model is refused unless ``--force`` (the manifest's weights sha256 would not match).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from ._common import (
    UsageError,
    add_dataset_args,
    add_model_args,
    device,
    eval_dataset,
    key_value,
    list_images,
    load_model_and_config,
    positive_int,
    readable_images,
)

MARKET_NAMES = r"^(?P<pid>-?\d+)_c(?P<camid>\d+)"
ADD_CHUNK = 8192  # images embedded per step of a build


def _entries_from_names(paths: list[str], pattern: re.Pattern | None, camid_base: int):
    """Index metadata from file names: ``pid`` / ``camid`` / ``track`` / ``timestamp`` groups."""
    from ..index import EntryMeta

    entries = []
    for path in paths:
        match = pattern.search(Path(path).name) if pattern else None
        groups = match.groupdict() if match else {}
        camid = groups.get("camid")
        entries.append(EntryMeta(
            path=str(Path(path).resolve()),
            pid=int(groups["pid"]) if groups.get("pid") is not None else None,
            camid=int(camid) - camid_base if camid is not None else None,
            timestamp=float(groups["timestamp"]) if groups.get("timestamp") is not None else None,
            track_id=int(groups["track"]) if groups.get("track") is not None else None,
            tag=groups.get("tag"),
        ))
    return entries


def _source_of(args) -> dict[str, str]:
    """Where the model can be loaded from again (stored in the manifest)."""
    if args.checkpoint:
        return {"checkpoint": str(Path(args.checkpoint).resolve())}
    is_file = args.model.lower().endswith(".onnx")
    source = {"model": str(Path(args.model).resolve()) if is_file else args.model}
    if args.pretrained:
        source["pretrained"] = str(Path(args.pretrained).resolve())
    return source


def _manifest(model, cfg, source):
    from ..index import IndexManifest

    weights = model.path if getattr(model, "is_onnx", False) else model
    return IndexManifest.for_model(weights, cfg.model.name, (cfg.data.height, cfg.data.width),
                                   normalized=True, flip=cfg.eval.flip, model_source=source)


def _embed_paths(model, paths, cfg, run_on, load_image=None, progress=None) -> np.ndarray:
    """``(N, D)`` float32 embeddings of image files (a progress bar when stderr is a terminal)."""
    import sys

    from ..data import read_image
    from ..data.loader import eval_loader, extraction_workers
    from ..data.transforms import TransformConfig, build_transforms
    from ..evaluation.features import extract_features

    transform = build_transforms(TransformConfig(height=cfg.data.height, width=cfg.data.width), train=False)
    loader = eval_loader([(p, -1, -1) for p in paths], load_image or read_image, transform,
                         batch_size=cfg.data.eval_batch_size,
                         num_workers=extraction_workers(cfg.eval.num_workers, cfg.data.num_workers))
    e = cfg.eval
    progress = sys.stderr.isatty() if progress is None else progress
    feats = extract_features(model, loader, run_on, amp=e.amp, channels_last=e.channels_last, flip=e.flip,
                             backend=e.backend, progress=progress).features
    return feats.numpy()


def _add_in_chunks(index, model, cfg, run_on, paths, entries, load_image=None) -> int:
    """Embed and add ``paths`` chunk by chunk, all in one commit (atomic: all or nothing)."""
    from tqdm import tqdm

    with index.batch():
        for start in tqdm(range(0, len(paths), ADD_CHUNK), desc="index", disable=len(paths) <= ADD_CHUNK):
            chunk = slice(start, start + ADD_CHUNK)
            index.add(_embed_paths(model, paths[chunk], cfg, run_on, load_image), entries[chunk])
    return len(paths)


def cmd_index_build(args) -> int:
    from ..index import EntryMeta, GalleryIndex

    if bool(args.images) == bool(args.dataset):
        raise UsageError("give --images DIR (with --pattern) or --dataset NAME --root DIR, one of them")
    params = _params(args.param)
    from ..fileio import ensure_writable_dir
    from ..index.store import check_new_folder, fsync_path

    target = Path(args.output)
    check_new_folder(target)  # before the model loads: a bad --output is one line, at once
    ensure_writable_dir(target.absolute().parent, f"folder of --output {args.output!r}")
    staging = _staging_folder(target)
    model, cfg = load_model_and_config(args)
    run_on = device(args)
    load_image = None
    if args.images:
        paths = list_images(args.images, "--images")
        entries = _entries_from_names(paths, args.pattern, args.camid_base)
    else:
        dataset = eval_dataset(args, cfg)
        samples = [s for split in args.splits for s in getattr(dataset, split)]
        if not samples:
            raise UsageError(f"--dataset {args.dataset}: the split(s) {', '.join(args.splits)} hold no image")
        original = dict(zip([s.img_path for s in dataset.train], dataset.original_train_pids()))
        paths = [s.img_path for s in samples]
        entries = [EntryMeta(path=s.img_path, pid=original.get(s.img_path, s.pid), camid=s.camid,
                             tag=dataset.name) for s in samples]
        load_image = dataset.load_image
    if cfg.data.skip_unreadable:
        keep = set(readable_images(paths, True, "--images" if args.images else "--dataset", load_image))
        entries = [e for p, e in zip(paths, entries) if p in keep]
        paths = [p for p in paths if p in keep]
    dim = _embed_paths(model, paths[:1], cfg, run_on, load_image, progress=False).shape[1]
    # built whole in a hidden sibling and renamed into place: a kill -9 or an error at any
    # moment leaves no index (and no empty one that would block the next build)
    building = staging
    index = GalleryIndex.create(building, dim=dim, manifest=_manifest(model, cfg, _source_of(args)),
                                kind=args.kind, **params)
    try:
        with index:
            count = _add_in_chunks(index, model, cfg, run_on, paths, entries, load_image)
            described = index.manifest.describe()
        check_new_folder(target)
        os.replace(building, target)
        fsync_path(target.absolute().parent)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    print(f"built {args.output}: {count} images, {args.kind}, dim {dim}, model {described}")
    return 0


def _staging_folder(target: Path) -> Path:
    """A fresh hidden sibling of ``target`` to build in; those of killed builds are removed."""
    import uuid

    parent = target.absolute().parent
    for stale in parent.glob(f".{target.name}.building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return parent / f".{target.name}.building-{uuid.uuid4().hex[:8]}"


def _params(items) -> dict:
    from ..engine.config import parse_yaml

    return {key: parse_yaml(value) for key, value in items or []}


def _model_for_index(args, manifest):
    """The model to embed with: the flags' if given, else the one the manifest names."""
    if args.checkpoint or args.model:
        return load_model_and_config(args)
    source = manifest.model_source or {}
    if "checkpoint" in source:
        args.checkpoint = source["checkpoint"]
    elif "model" in source:
        args.model, args.pretrained = source["model"], source.get("pretrained")
    else:
        raise UsageError("the index does not record its model: give --checkpoint or --model")
    model, cfg = load_model_and_config(args)
    return model, cfg


def _open_for_model(args, **search_params):
    """Open ``args.index`` and the model to embed with, checking they belong together."""
    from ..index import GalleryIndex

    with GalleryIndex.open(args.index) as peek:
        manifest = peek.manifest
    model, cfg = _model_for_index(args, manifest)
    _warn_if_flip_differs(args, cfg.eval.flip, manifest.flip)
    cfg.eval.flip = manifest.flip  # embed as the index was built
    if tuple(manifest.input_size) != (cfg.data.height, cfg.data.width):
        cfg.data.height, cfg.data.width = manifest.input_size
    from ..index import ModelMismatchError

    expected = _manifest(model, cfg, manifest.model_source)
    try:
        index = GalleryIndex.open(args.index, expect_model=expected, force=args.force, **search_params)
    except ModelMismatchError as err:
        raise ModelMismatchError(str(err).replace("pass force=True", "pass --force")) from None
    return index, model, cfg


def _warn_if_flip_differs(args, asked: bool, built: bool) -> None:
    """One warning when --flip (or --set eval.flip=...) asks for other flip TTA than the index
    was built with: the index's setting is used, as queries must be embedded like the gallery."""
    import warnings

    given = getattr(args, "flip", False) or any(s.split("=", 1)[0].strip() == "eval.flip" for s in getattr(args, "set", []))
    if given and asked != built:
        what, how = ("--flip" if asked else "eval.flip=false"), ("with" if built else "without")
        warnings.warn(f"{what} ignored: index {args.index!r} was built {how} flip and its setting is used "
                      "(images are embedded as its gallery was)", stacklevel=3)


def cmd_index_add(args) -> int:
    index, model, cfg = _open_for_model(args)
    paths = readable_images(list_images(args.images, "--images"), cfg.data.skip_unreadable, "--images")
    with index:
        count = _add_in_chunks(index, model, cfg, device(args), paths,
                               _entries_from_names(paths, args.pattern, args.camid_base))
        print(f"added {count} images to {args.index}: {len(index)} entries")
    return 0


def cmd_index_remove(args) -> int:
    from ..index import GalleryIndex

    with GalleryIndex.open(args.index) as index:
        index.remove(args.ids)
        print(f"removed {len(set(args.ids))} entries from {args.index}: {len(index)} left")
    return 0


def cmd_index_info(args) -> int:
    from ..index import GalleryIndex

    with GalleryIndex.open(args.index) as index:
        body = index.info().as_dict()
        if args.verify:
            body["verify"] = index.verify().as_dict()
        print(json.dumps(body, indent=2, default=str))
    return 0


def search_index(args) -> int:
    """``reidkit search --index IDX --query IMG ...``: top-k from the index (re-ranked on request)."""
    from ..data import read_image
    from ..fileio import atomic_write_text
    from ..index import expand_queries, rerank_result
    from ..visualize import ranked_list_grid

    if args.gallery:
        raise UsageError("give --gallery DIR or --index IDX, not both")
    index, model, cfg = _open_for_model(args)
    with index:
        queries = list(args.query)
        for path in queries:
            read_image(path)
        qf = _embed_paths(model, queries, cfg, device(args), progress=False)
        retrieve = max(args.topk, 100) if (cfg.eval.rerank is not None or cfg.eval.aqe is not None) else args.topk
        result = index.search(qf, topk=min(retrieve, max(len(index), 1)))
        if cfg.eval.aqe is not None:
            qf = expand_queries(index, qf, result, **{"k": min(10, result.ids.shape[1]), **cfg.eval.aqe})
            result = index.search(qf, topk=result.ids.shape[1])
        if cfg.eval.rerank is not None:
            result = rerank_result(index, qf, result, topk=args.topk, **cfg.eval.rerank)
        report, rows = [], []
        for qi, qpath in enumerate(queries):
            hits = result.metadata[qi][: args.topk]
            scores = result.scores[qi][: len(hits)]
            print(f"query {qpath}")
            for rank, (entry, score) in enumerate(zip(hits, scores), start=1):
                print(f"  {rank:3d}  {score:.4f}  id={entry.id}  {entry.path}")
            report.append({"query": qpath, "matches": [{"rank": r, "score": float(s), "id": e.id, **e.as_dict()}
                                                       for r, (e, s) in enumerate(zip(hits, scores), 1)]})
            rows.append((read_image(qpath), [_thumb(e.path) for e in hits], [float(s) for s in scores],
                         [None] * len(hits)))
    if args.json:
        atomic_write_text(args.json, json.dumps({"score": "cosine similarity, larger is closer"
                                                 if cfg.eval.rerank is None else "negated re-ranked distance",
                                                 "results": report}, indent=2))
    print(f"wrote {ranked_list_grid(rows, args.output)}")
    return 0


def _thumb(path: str):
    """The indexed image, or a grey placeholder when it has moved since indexing."""
    from PIL import Image

    from ..data import ImageReadError, read_image

    try:
        return read_image(path)
    except ImageReadError:
        return Image.new("RGB", (64, 128), (200, 200, 200))


def add_parsers(sub) -> None:
    from ._common import Parser

    p = sub.add_parser("index", help="build and maintain a persistent gallery index (faiss + SQLite)")
    isub = p.add_subparsers(dest="index_command", required=True, parser_class=Parser)

    b = isub.add_parser("build", help="embed a folder or a dataset split into a new index")
    add_model_args(b)
    add_dataset_args(b)
    b.add_argument("--images", help="folder of images (searched recursively)")
    b.add_argument("--pattern", type=name_pattern_optional, default=re.compile(MARKET_NAMES),
                   help="regex naming pid / camid / track / timestamp groups in file names (default Market-style)")
    b.add_argument("--camid-base", type=int, default=1, help="number of the first camera in file names")
    b.add_argument("--splits", nargs="+", default=["gallery"], choices=["train", "query", "gallery"],
                   help="with --dataset: the splits to index")
    b.add_argument("--output", required=True, help="index folder to create (must not exist or be empty)")
    b.add_argument("--kind", default="flat", choices=["flat", "ivf", "ivfpq", "hnsw"], help="faiss index kind")
    b.add_argument("--param", action="append", type=key_value, metavar="KEY=VALUE",
                   help="index parameter (nlist=4096, nprobe=64, m=128, M=32, ef_search=256, ...)")
    b.set_defaults(func=cmd_index_build)

    a = isub.add_parser("add", help="embed more images into an index (with the model that built it)")
    a.add_argument("index", help="index folder")
    add_model_args(a)
    a.add_argument("--images", required=True, help="folder of images")
    a.add_argument("--pattern", type=name_pattern_optional, default=re.compile(MARKET_NAMES))
    a.add_argument("--camid-base", type=int, default=1)
    a.add_argument("--force", action="store_true", help="accept a model other than the one that built the index")
    a.set_defaults(func=cmd_index_add)

    r = isub.add_parser("remove", help="remove entries by id")
    r.add_argument("index", help="index folder")
    r.add_argument("--ids", required=True, nargs="+", type=int, help="entry ids")
    r.set_defaults(func=cmd_index_remove)

    i = isub.add_parser("info", help="print an index's manifest and sizes as JSON")
    i.add_argument("index", help="index folder")
    i.add_argument("--verify", action="store_true",
                   help="also read and check every file (checksums, faiss index vs manifest, SQLite integrity)")
    i.set_defaults(func=cmd_index_info)


def name_pattern_optional(text: str) -> re.Pattern | None:
    """argparse type: a regular expression (any named groups among pid, camid, track, timestamp, tag),
    or an empty string for none."""
    import argparse

    if not text:
        return None
    try:
        regex = re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression ({err})") from None
    unknown = set(regex.groupindex) - {"pid", "camid", "track", "timestamp", "tag"}
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown group(s) {sorted(unknown)}; use pid, camid, track, timestamp, tag")
    return regex
