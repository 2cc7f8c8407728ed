"""Training images/s: a torchreid-style plain loop against reidkit's training step, each speed
lever on and off, same run, same CPU, same model, batch and input size.

Not a test: prints a table. Example (run it alone on a quiet machine; ~1 h at the defaults)::

    .venv/bin/python benchmarks/bench_train.py --models mobilenet_v2 osnet_x1_0 --sizes 256x128 160x64

Rows, each timed on the same P x K batches (default 16 x 4 = 64 images) of the training images:

* ``baseline``: a minimal equivalent of torchreid's ``ImageSoftmaxEngine`` /
  ``ImageTripletEngine`` loop, written here: a ``DataLoader`` whose worker processes open each
  file with ``PIL.Image.open(...).convert("RGB")`` and apply classic ``torchvision.transforms``
  (resize, flip, pad + random crop, to-tensor, normalise, random erasing) every epoch; eager
  float32 forward, label-smoothed cross-entropy + batch-hard triplet (margin 0.3), Adam.
* ``reidkit``: :meth:`reidkit.engine.trainer.Trainer.train_step` (the trainer's own step: the
  ``supervised`` method, its loss mapping and optimiser) with every speed option off and
  ``train.amp: false``.
* one row per lever, on alone: ``train.channels_last``, ``train.compile`` (inductor),
  ``data.cache: memory`` (with the default workers, and with ``data.num_workers: 0``),
  ``train.threads`` (one core left to the loader), ``train.flush_denormal``, ``train.amp``
  (bfloat16) only where the CPU has native bfloat16 (elsewhere ``train.amp`` runs float32 and
  the row is skipped), and last ``train.reuse_memory`` (glibc keeps freed memory; it cannot be
  undone in a process, so it runs after the others and each model and size runs in a process
  of its own, its baseline under the default allocator);
* ``best``: the levers that were at least ``--helps`` faster than ``reidkit`` on this machine,
  together.

Each row builds its model from the same seed (MobileNetV2 from the ImageNet weights of
``--mobilenet-weights`` when the file exists: randomly initialised MobileNetV2 makes denormal
activations that slow eager CPU maths down, the weights are what its recipes use), runs
``--warmup`` steps untimed (compilation happens there), then ``--windows`` windows of
``--iters`` steps; the table gives the median images/s of the windows (min-max after it).
The time includes waiting for the loader, as in training. Images: the training split of
CUHK01 split 0 (``--root``, read in place, research-only data never copied), or with
``--synthetic`` (or when ``--root`` is missing) reidkit's synthetic persons written once as
JPEG files to a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo
from torch import nn

from reidkit.data import create_dataset
from reidkit.data.loader import default_num_workers
from reidkit.data.samplers import PKSampler
from reidkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reidkit.engine import speed
from reidkit.engine.config import apply_overrides, config_from_dict, validate_config
from reidkit.engine.runtime import cpu_has_native_bf16
from reidkit.engine.trainer import Trainer
from reidkit.models import create_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_ROOT = SHARED / "data" / "CUHK01" / "campus"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_features.pth"
PAD, LABEL_SMOOTHING, MARGIN, LR, WEIGHT_DECAY = 10, 0.1, 0.3, 3.5e-4, 5e-4


# ---------------------------------------------------------------------------- data
def synthetic_folder(folder: Path, num_ids: int = 128) -> Path:
    """Write reidkit's synthetic persons (2 cameras x 2 images each, 160 x 64 like CUHK01's
    crops) as Market-style JPEG files (``0001_c1_00000.jpg``)."""
    ds = create_dataset("synthetic", num_train_ids=num_ids, num_test_ids=2, num_cameras=2,
                        images_per_id_per_camera=2, image_size=[160, 64])
    for i, s in enumerate(ds.train):
        ds.load_image(s.img_path).save(folder / f"{s.pid + 1:04d}_c{s.camid + 1}_{i:05d}.jpg", quality=95)
    return folder


def data_section(args, size: tuple[int, int], folder: Path | None) -> dict:
    """reidkit's ``data`` section: the same images, batch and augmentation as the baseline."""
    data = {"height": size[0], "width": size[1], "pad": PAD, "flip_p": 0.5, "random_erasing_p": 0.5,
            "num_pids_per_batch": args.batch // args.k, "num_instances": args.k, "num_workers": args.workers}
    if folder is None:
        return {**data, "name": "cuhk01", "root": str(args.root), "options": {"split_id": 0}}
    return {**data, "name": "folder", "root": str(folder), "options": {"mode": "train"}}


def pretrained(args, model: str) -> str | None:
    return str(args.mobilenet_weights) if model == "mobilenet_v2" and args.mobilenet_weights.is_file() else None


# ---------------------------------------------------------------------------- baseline
class FileImages(torch.utils.data.Dataset):
    """``(image, pid)`` of ``(path, pid, camid)`` samples: PIL decode + classic transforms."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, pid, _ = self.samples[i]
        return self.transform(Image.open(path).convert("RGB")), pid


def batch_hard_triplet(features: torch.Tensor, pids: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """torchreid's ``TripletLoss``: hardest positive and negative per anchor, Euclidean distance
    (smaller is closer), margin ranking. ``features: (B, D)``, ``pids: (B,) int64``."""
    dist = torch.cdist(features, features).clamp(min=1e-12)  # (B, B)
    same = pids[:, None] == pids[None, :]  # (B, B)
    hardest_pos = (dist * same).max(dim=1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(dim=1).values
    return torch.relu(hardest_pos - hardest_neg + margin).mean()


class Baseline:
    """The plain loop: ``next_step()`` runs one optimiser step and returns the batch size."""

    def __init__(self, args, model_name: str, size: tuple[int, int], train_samples, num_classes: int):
        from torchvision import transforms as T

        transform = T.Compose([
            T.Resize(size), T.RandomHorizontalFlip(), T.Pad(PAD), T.RandomCrop(size), T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD), T.RandomErasing(value=0),
        ])
        self.sampler = PKSampler([s[1] for s in train_samples], args.batch // args.k, args.k, seed=0)
        workers = default_num_workers() if args.workers is None else args.workers
        self.loader = torch.utils.data.DataLoader(
            FileImages(train_samples, transform), batch_size=args.batch, sampler=self.sampler,
            num_workers=workers, drop_last=True,
        )
        torch.manual_seed(0)
        self.model = create_model(model_name, num_classes=num_classes, pretrained=pretrained(args, model_name)).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.ce = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
        self.batches = endless(self.loader, self.sampler)

    def next_step(self) -> int:
        images, pids = next(self.batches)
        out = self.model.forward_train(images)
        loss = self.ce(out.logits, pids) + batch_hard_triplet(out.feature, pids)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return images.shape[0]


def endless(loader, sampler):
    """The loader's batches, epoch after epoch (a new sampler order each epoch)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


# ---------------------------------------------------------------------------- reidkit
class ReidkitStep:
    """reidkit's trainer with ``overrides``; ``next_step()`` is one ``Trainer.train_step``."""

    def __init__(self, args, model_name: str, size, folder, overrides: list[str], run_dir: Path):
        raw = {
            "seed": 0,
            "data": data_section(args, size, folder),
            "model": {"name": model_name, "pretrained": pretrained(args, model_name)},
            "optim": {"name": "adam", "lr": LR, "weight_decay": WEIGHT_DECAY},
            "loss": {"ce": {"weight": 1.0, "label_smoothing": LABEL_SMOOTHING}, "triplet": {"weight": 1.0, "margin": MARGIN}},
            "train": {"max_epochs": 10_000, "eval_every": 0, "amp": False},
        }
        cfg = validate_config(config_from_dict(apply_overrides(raw, list(overrides))))
        self.trainer = Trainer(cfg, run_dir, log=lambda *_: None, overwrite=True)
        self.trainer.method.train()
        self.trainer.method.on_epoch_start(0)
        self.batches = endless(self.trainer.loader, self.trainer.loader.sampler)
        self.n = 0

    def next_step(self) -> int:
        batch, _total, _parts = self.trainer.train_step(next(self.batches), self.n)
        self.n += 1
        return batch.images.shape[0]


# ---------------------------------------------------------------------------- timing
def measure(runner, args) -> dict:
    """Warm-up steps, then ``args.windows`` windows of ``args.iters`` steps: images/s of each."""
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        runner.next_step()
    warmup_s = time.perf_counter() - t0
    rates = []
    for _ in range(args.windows):
        t0, images = time.perf_counter(), 0
        for _ in range(args.iters):
            images += runner.next_step()
        rates.append(images / (time.perf_counter() - t0))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "warmup_s": warmup_s}


def lever_variants(args) -> dict[str, list[str]]:
    """Row name -> config overrides on top of reidkit's plain step; only levers this machine has."""
    cpus = os.cpu_count() or 1
    variants = {
        "reidkit": [],
        "channels_last": ["train.channels_last=true"],
        "compile": ["train.compile=true"],
        "cache": ["data.cache=memory"],
        "cache, 0 workers": ["data.cache=memory", "data.num_workers=0"],
        "flush_denormal": ["train.flush_denormal=true"],
    }
    if cpus > 1:
        variants[f"threads={cpus - 1}"] = [f"train.threads={cpus - 1}"]
    if cpu_has_native_bf16():
        variants["bf16 (amp)"] = ["train.amp=true"]
    if speed.compile_unavailable(torch.device("cpu")):
        del variants["compile"]
    # last: glibc's allocator setting cannot be undone in a process, so every row after it
    # (only "best") runs with it
    variants["reuse_memory"] = ["train.reuse_memory=true"]
    if args.variants is not None:
        variants = {k: v for k, v in variants.items() if k == "reidkit" or any(k.startswith(w) for w in args.variants)}
    return variants


def best_overrides(results: dict[str, dict], variants: dict[str, list[str]], helps: float) -> list[str]:
    """The overrides of every lever at least ``helps`` x faster than ``reidkit``; where two set
    the same key, the faster one's value wins."""
    base = results["reidkit"]["median"]
    chosen = sorted((results[n]["median"], n) for n in variants if n != "reidkit" and n in results
                    and results[n]["median"] >= helps * base)
    merged: dict[str, str] = {}
    for _rate, name in chosen:  # slowest first: faster levers overwrite shared keys
        merged.update(o.split("=", 1) for o in variants[name])
    return [f"{k}={v}" for k, v in merged.items()]


def run_row(make, args, label: str) -> dict:
    threads = torch.get_num_threads()
    print(f"  {label} ...", file=sys.stderr, flush=True)
    try:
        runner = make()
        return measure(runner, args)
    except Exception as err:  # noqa: BLE001 - one failing lever must not lose the others' numbers
        print(f"  {label}: failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return {}
    finally:
        runner = None
        gc.collect()
        torch.set_num_threads(threads)  # levers that are process-wide are undone for the next row
        torch.set_flush_denormal(False)
        torch._dynamo.reset()


def bench(args, model: str, size, folder, samples, num_classes: int, work: Path) -> list[tuple]:
    """All rows for one model and input size: ``(name, result, overrides)``."""
    print(f"{model} {size[0]}x{size[1]}:", file=sys.stderr)
    rows = [("baseline", run_row(lambda: Baseline(args, model, size, samples, num_classes), args, "baseline"), [])]
    variants, results = lever_variants(args), {}
    for name, overrides in variants.items():
        results[name] = run_row(lambda: ReidkitStep(args, model, size, folder, overrides, work / "run"), args, name)
        rows.append((name, results[name], overrides))
    if results.get("reidkit"):
        best = best_overrides({k: v for k, v in results.items() if v}, variants, args.helps)
        if best and all(set(best) != set(v) for v in variants.values()):  # not a row measured already
            rows.append(("best", run_row(lambda: ReidkitStep(args, model, size, folder, best, work / "run"), args, "best"), best))
    return rows


def print_table(args, model: str, size, rows: list[tuple]) -> None:
    base = rows[0][1].get("median")
    print(f"\n{model}, {size[0]}x{size[1]}, batch {args.batch} ({args.batch // args.k} x {args.k})", flush=True)
    print(f"  {'row':<18} {'img/s':>8} {'(min-max)':>15} {'vs baseline':>12} {'warm-up s':>10}  overrides")
    for name, r, overrides in rows:
        if not r:
            print(f"  {name:<18} {'failed':>8}")
            continue
        ratio = f"{r['median'] / base:.2f}x" if base else "-"
        spread = f"({r['min']:.1f}-{r['max']:.1f})"
        print(f"  {name:<18} {r['median']:8.1f} {spread:>15} {ratio:>12} {r['warmup_s']:10.1f}  {' '.join(overrides)}")


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def strip_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the options ``names`` and their values (``--models a b`` and so on)."""
    out, skipping = [], False
    for item in argv:
        if item.startswith("--"):
            skipping = item.split("=", 1)[0] in names
        if not skipping:
            out.append(item)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "osnet_x1_0"])
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 128)], help="HxW input sizes, e.g. 256x128 160x64")
    p.add_argument("--batch", type=int, default=64, help="images per batch, P x K")
    p.add_argument("--k", type=int, default=4, help="images per identity in a batch (K)")
    p.add_argument("--workers", type=int, default=None, help="loader workers of both loops (default: reidkit's automatic)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per row (compilation happens here)")
    p.add_argument("--windows", type=int, default=5, help="timed windows per row (the median is reported)")
    p.add_argument("--iters", type=int, default=4, help="steps per timed window")
    p.add_argument("--variants", nargs="*", default=None,
                   help="only these levers (channels_last compile cache threads flush_denormal bf16 reuse_memory); reidkit always runs")
    p.add_argument("--helps", type=float, default=1.03, help="speed-up over reidkit's plain step that makes a lever part of 'best'")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="CUHK01 campus folder")
    p.add_argument("--synthetic", action="store_true", help="synthetic JPEG files instead of CUHK01")
    p.add_argument("--mobilenet-weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch % args.k or args.batch // args.k < 2:
        p.error("--batch must be a multiple of --k with at least 2 identities")
    if not args.child:  # the parent prints the header once
        print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}, "
              f"compile: {speed.compile_unavailable(torch.device('cpu')) or 'available'}")
        print("command: " + " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        folder = None
        if args.synthetic or not args.root.is_dir():
            if not args.synthetic:
                print(f"{args.root} not found: using synthetic images", file=sys.stderr)
            (work / "images").mkdir()
            folder = synthetic_folder(work / "images")
        section = data_section(args, (256, 128), folder)
        ds = create_dataset(section["name"], root=section["root"], **section["options"])
        samples = [tuple(s) for s in ds.train]
        if not args.child:
            print(f"images: {section['root']} ({len(samples)} training images, {ds.num_train_pids} identities)", flush=True)
        combos = [(model, size) for model in args.models for size in args.sizes]
        if len(combos) > 1:  # one process each: the baseline must not inherit reuse_memory
            for model, size in combos:
                rest = sys.argv[1:] if argv is None else list(argv)
                child = [sys.executable, __file__, *strip_options(rest, ("--models", "--sizes")),
                         "--models", model, "--sizes", f"{size[0]}x{size[1]}", "--child"]
                subprocess.run(child, check=False)
            return
        for model, size in combos:
            print_table(args, model, size, bench(args, model, size, folder, copy.copy(samples), ds.num_train_pids, work))


if __name__ == "__main__":
    main()
