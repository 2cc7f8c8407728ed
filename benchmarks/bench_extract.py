"""Files -> features throughput (images/s) per extraction path and model, and Embedder crops/s.

Not a test: prints tables. Example (run it alone: ``flock /tmp/reidkit-heavy.lock ...``)::

    .venv/bin/python benchmarks/bench_extract.py --models osnet_x1_0 resnet50 mobilenet_v2 \\
        --images ../shared/data/CUHK01/campus --limit 512

Paths, each from the image files to a ``(N, D)`` float32 matrix at 256 x 128, batch 32:

* ``torchreid``: a minimal re-implementation of torchreid's ``FeatureExtractor`` (the baseline):
  per image ``PIL.Image.open(...).convert("RGB")`` and classic ``torchvision.transforms``
  ``Resize`` / ``ToTensor`` / ``Normalize`` in the calling thread, images stacked into batches,
  the model in eager fp32 under ``torch.no_grad``.
* ``reidkit torch``: ``extract_features(..., backend="torch")`` over ``eval_loader`` (reidkit's
  ``read_image`` and test transform in DataLoader worker processes).
* ``reidkit onnxruntime``: the same with ``backend="onnxruntime"`` (the model exported to ONNX in
  memory, checked on the first batch, run by onnxruntime); the export time is included and also
  printed on its own.
* ``reidkit bf16``: torch with bfloat16 autocast + channels-last, only on CPUs with native bf16.

Each model runs in a process of its own, its baseline first, under glibc's default allocator and
with nothing run before it in the process (eager torch's speed depends on the allocator's state:
measured 13.7 img/s for OSNet in a fresh process, 21.4 after the decode section had run in it);
reidkit's rows then run with freed memory kept for reuse
(:func:`reidkit.engine.speed.reuse_freed_memory`, as the ``reidkit`` inference commands do;
``--no-reuse-memory`` leaves the default). The decode section runs last.

``cos`` is the smallest per-image cosine similarity to the ``reidkit torch`` features (larger is
closer). MobileNetV2 gets the ImageNet weights of ``--mobilenet-weights`` when that file exists
(randomly initialised MobileNetV2 produces denormal activations that make eager torch unusually
slow); the other models are randomly initialised (seed 0), which does not change their speed.
The decode section times reading + resizing alone (PIL ``read_image`` + the test transform, and
``torchvision.io.decode_image``), in one thread and through DataLoader workers.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reidkit.data import read_image
from reidkit.data.loader import eval_loader
from reidkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, build_transforms
from reidkit.engine.runtime import cpu_has_native_bf16
from reidkit.engine.speed import reuse_freed_memory
from reidkit.evaluation.features import extract_features, last_backend
from reidkit.inference.backends import cpu_threads, onnx_backend_for
from reidkit.models import create_model

SIZE = (256, 128)
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "mobilenet_v2_imagenet_features.pth"


def build(name: str, weights: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    pretrained = str(weights) if name == "mobilenet_v2" and weights.is_file() else None
    return create_model(name, num_classes=0, pretrained=pretrained).eval()


# ---------------------------------------------------------------------------- paths
def torchreid_baseline(model, paths: list[str], batch: int) -> np.ndarray:
    """torchreid's FeatureExtractor, reduced to what it does per call: PIL + classic transforms
    per image in this thread, then one eager fp32 forward per batch."""
    from PIL import Image
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(SIZE), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    out = []
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            images = [transform(Image.open(p).convert("RGB")) for p in paths[start : start + batch]]
            out.append(model(torch.stack(images)).numpy())
    return np.concatenate(out)


def reidkit_path(model, paths: list[str], batch: int, backend: str, amp: bool | None, workers: int | None) -> np.ndarray:
    transform = build_transforms(TransformConfig(height=SIZE[0], width=SIZE[1]), train=False)
    loader = eval_loader([(p, 0, 0) for p in paths], read_image, transform, batch_size=batch, num_workers=workers)
    return extract_features(model, loader, backend=backend, amp=amp).features.numpy()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def bench_baseline(name: str, paths: list[str], args) -> tuple[np.ndarray, float]:
    """The torchreid baseline's features and seconds, under glibc's default allocator."""
    model = build(name, args.mobilenet_weights)
    with torch.no_grad():
        model(torch.zeros(2, 3, *SIZE))  # warm-up (oneDNN kernels)
    return timed(lambda: torchreid_baseline(model, paths, args.batch))


def bench_model(name: str, paths: list[str], args, base: np.ndarray, t_base: float) -> None:
    model = build(name, args.mobilenet_weights)
    with torch.no_grad():
        model(torch.zeros(2, 3, *SIZE))
    rows = []
    ref, t_torch = timed(lambda: reidkit_path(model, paths, args.batch, "torch", False, args.workers))
    rows += [("torchreid FeatureExtractor (baseline)", t_base, min_cosine(base, ref)),
             (f"reidkit torch [{last_backend()}]", t_torch, 1.0)]
    _, t_export = timed(lambda: onnx_backend_for(build(name, args.mobilenet_weights), SIZE))
    fast, t_fast = timed(lambda: reidkit_path(model, paths, args.batch, "onnxruntime", False, args.workers))
    rows.append((f"reidkit onnxruntime [{last_backend()}] (incl. export {t_export:.1f} s)", t_fast, min_cosine(fast, ref)))
    if cpu_has_native_bf16():
        bf16, t_bf16 = timed(lambda: reidkit_path(model, paths, args.batch, "torch", True, args.workers))
        rows.append((f"reidkit bf16 [{last_backend()}]", t_bf16, min_cosine(bf16, ref)))
    print(f"\n{name}: {len(paths)} files -> features, {SIZE[0]}x{SIZE[1]}, batch {args.batch}")
    for label, seconds, cos in rows:
        print(f"  {label:<72} {len(paths) / seconds:8.1f} img/s  {len(paths) / seconds / (len(paths) / t_base):5.2f}x  cos {cos:.6f}")
    if args.embedder:
        bench_embedder(model, paths, args)


def bench_embedder(model, paths: list[str], args) -> None:
    from reidkit import Embedder

    crops = [np.asarray(read_image(p)) for p in paths]  # decoded frames' crops, RGB uint8
    embedder = Embedder(model, input_size=SIZE, batch_size=args.batch)
    embedder.embed(crops[: args.batch])  # backend choice + export, not timed
    _, seconds = timed(lambda: embedder.embed(crops))
    print(f"  Embedder.embed (uint8 crops, {embedder.describe()}){'':<13} {len(crops) / seconds:8.1f} crops/s")


# ---------------------------------------------------------------------------- decoding
def bench_decode(paths: list[str], batch: int) -> None:
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as F

    transform = build_transforms(TransformConfig(height=SIZE[0], width=SIZE[1]), train=False)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def tv(p):
        x = F.resize(decode_image(read_file(p), mode=ImageReadMode.RGB), list(SIZE), antialias=True)
        return (x.float() / 255 - mean) / std

    print(f"\ndecode + resize to {SIZE[0]}x{SIZE[1]} + normalise, {len(paths)} files")
    for label, fn in (("read_image (PIL) + test transform, 1 thread", lambda p: transform(read_image(p))),
                      ("torchvision.io.decode_image + resize, 1 thread", tv)):
        _, seconds = timed(lambda: [fn(p) for p in paths])
        print(f"  {label:<52} {len(paths) / seconds:8.1f} img/s")
    for workers in sorted({0, 1, max(1, cpu_threads())}):
        loader = eval_loader([(p, 0, 0) for p in paths], read_image, transform, batch_size=batch, num_workers=workers)
        _, seconds = timed(lambda: [b for b in loader])
        print(f"  {'eval_loader, ' + str(workers) + ' worker(s)':<52} {len(paths) / seconds:8.1f} img/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["osnet_x1_0", "resnet50", "mobilenet_v2"])
    parser.add_argument("--images", required=True, help="folder of image files (e.g. ../shared/data/CUHK01/campus)")
    parser.add_argument("--limit", type=int, default=512, help="files to read (sorted, first N)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: reidkit's)")
    parser.add_argument("--mobilenet-weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--no-embedder", dest="embedder", action="store_false", help="skip Embedder crops/s")
    parser.add_argument("--no-decode", dest="decode", action="store_false", help="skip the decode section")
    parser.add_argument("--no-reuse-memory", dest="reuse_memory", action="store_false",
                        help="run reidkit's rows with glibc's default allocator too (REIDKIT_MALLOC=default)")
    args = parser.parse_args()
    exts = (".jpg", ".jpeg", ".png", ".bmp")
    paths = sorted(str(p) for p in Path(args.images).iterdir() if p.suffix.lower() in exts)[: args.limit]
    if not paths:
        raise SystemExit(f"--images {args.images!r} holds no images")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"CPU: {cpu}, {cpu_threads()} cores, native bf16: {cpu_has_native_bf16()}, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}")
    if len(args.models) > 1:  # one fresh process per model: no model's rows see another's heap
        for name in args.models:
            others = [a for a in sys.argv[1:] if a not in args.models and a != "--models"]
            subprocess.run([sys.executable, __file__, "--models", name, "--no-decode", *others], check=True)
    else:
        # The baseline first, in a fresh process with glibc's default allocator (what a
        # torchreid user runs with: its speed depends on what the process freed before, so
        # nothing runs before it); then reidkit's rows in the process state the reidkit CLI
        # runs in (freed memory reused).
        name = args.models[0]
        baseline = bench_baseline(name, paths, args)
        print(f"\nreidkit's rows: freed memory reused (mallopt) {reuse_freed_memory(args.reuse_memory)}")
        bench_model(name, paths, args, *baseline)
    if args.decode:  # last: its loaders and frees would change the baselines' allocator state
        bench_decode(paths, args.batch)


if __name__ == "__main__":
    main()
