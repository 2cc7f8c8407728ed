"""Training and inference throughput (images/s) per model on this machine.

Not a test: prints a table. Example (the numbers in docs/benchmarks.md came from this):

    .venv/bin/python benchmarks/bench_models.py --models mobilenet_v2 osnet_x1_0 --batch 64 --iters 5

For each model it times forward+backward+step (training, batch of random images, CE loss) and
forward under ``torch.inference_mode`` (inference), in float32 and in bfloat16 autocast, with the
contiguous (NCHW) and channels-last (NHWC) layouts for inference.
"""

from __future__ import annotations

import argparse
import time

import torch

from reidkit.engine.runtime import autocast, cpu_has_native_bf16
from reidkit.models import create_model, list_models


def _time(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def bench_train(name: str, batch: int, size: tuple[int, int], amp: bool, iters: int, warmup: int) -> float:
    device = torch.device("cpu")
    model = create_model(name, num_classes=100).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, *size), torch.randint(0, 100, (batch,))

    def step():
        with autocast(device, amp):
            out = model.forward_train(x)
        loss = torch.nn.functional.cross_entropy(out.logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return batch / _time(step, iters, warmup)


def bench_infer(name: str, batch: int, size: tuple[int, int], amp: bool, channels_last: bool, iters: int, warmup: int) -> float:
    device = torch.device("cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name).eval().to(memory_format=fmt)
    x = torch.randn(batch, 3, *size).contiguous(memory_format=fmt)

    @torch.inference_mode()
    def fwd():
        with autocast(device, amp):
            model(x)

    return batch / _time(fwd, iters, warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "osnet_x1_0", "osnet_x0_25", "resnet50"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args()
    size = (args.height, args.width)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}, "
          f"batch {args.batch}, input {args.height}x{args.width}")
    print(f"{'model':<14} {'train fp32':>10} {'train bf16':>10} {'inf fp32':>9} {'inf fp32 CL':>11} {'inf bf16':>9} {'inf bf16 CL':>11}   (images/s)")
    for name in args.models:
        if name not in list_models():
            raise SystemExit(f"unknown model {name!r}")
        row = []
        for amp in (False, True):
            row.append(float("nan") if args.skip_train else bench_train(name, args.batch, size, amp, args.iters, args.warmup))
        for amp in (False, True):
            for cl in (False, True):
                row.append(bench_infer(name, args.batch, size, amp, cl, args.iters, args.warmup))
        tr32, tr16, i32, i32cl, i16, i16cl = row
        print(f"{name:<14} {tr32:10.1f} {tr16:10.1f} {i32:9.1f} {i32cl:11.1f} {i16:9.1f} {i16cl:11.1f}", flush=True)


if __name__ == "__main__":
    main()
