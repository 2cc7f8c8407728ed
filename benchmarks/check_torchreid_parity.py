"""Check that torchreid model-zoo files load into reidkit and embed exactly as torchreid does.

For each architecture, torchreid's own module (from a torchreid source tree, never imported as a
package: only its model files are loaded, they need nothing but torch) is given random weights,
batch-norm statistics and instance-norm affines, saved the way torchreid's zoo files are
(``{"state_dict": {"module.<key>": ...}, "epoch": ...}``), loaded by
``reidkit.models.create_model(name, pretrained=FILE)`` and both embed the same random batch in
eval mode. It prints the largest absolute difference per architecture and exits 1 if any exceeds
``--tolerance``.

torchreid is not a dependency of reidkit; get its source without installing it::

    pip download --no-deps --no-binary :all: torchreid==0.2.5 -d /tmp/trdl && tar -xzf /tmp/trdl/torchreid-0.2.5.tar.gz -C /tmp/trdl
    python benchmarks/check_torchreid_parity.py --torchreid-src /tmp/trdl/torchreid-0.2.5
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ARCHS = {
    "osnet": ["osnet_x1_0", "osnet_x0_75", "osnet_x0_5", "osnet_x0_25", "osnet_ibn_x1_0"],
    "osnet_ain": ["osnet_ain_x1_0", "osnet_ain_x0_75", "osnet_ain_x0_5", "osnet_ain_x0_25"],
    "resnet": ["resnet50"],
}


def load_module(src: Path, name: str):
    path = src / "torchreid" / "reid" / "models" / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"--torchreid-src {src}: no {path} (expected a torchreid source tree)")
    spec = importlib.util.spec_from_file_location(f"torchreid_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomise(model: nn.Module) -> None:
    """Random affine parameters and running statistics, so a wrong mapping cannot hide."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)) and mod.weight is not None:
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
            if isinstance(mod, nn.Linear):
                mod.weight.normal_(0, 0.05)
                mod.bias.uniform_(-0.1, 0.1)


def main(argv: list[str] | None = None) -> int:
    from reidkit.models import create_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--torchreid-src", type=Path, required=True, help="folder of an unpacked torchreid source release")
    p.add_argument("--archs", nargs="+", help="subset of architectures (default: all ten)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest accepted absolute difference")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 256, 128)
    worst = 0.0
    folder = Path(tempfile.mkdtemp(prefix="torchreid-parity-"))
    for module_name, names in ARCHS.items():
        module = None
        for name in names:
            if args.archs and name not in args.archs:
                continue
            module = module or load_module(args.torchreid_src, module_name)
            ref = getattr(module, name)(num_classes=751, pretrained=False)
            randomise(ref)
            ref.eval()
            path = folder / f"{name}.pth.tar"
            torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
            ours = create_model(name, num_classes=0, pretrained=str(path)).eval()
            with torch.no_grad():
                a, b = ref(x), ours(x)
            diff = (a - b).abs().max().item() if a.shape == b.shape else float("inf")
            worst = max(worst, diff)
            print(f"{name:16s} torchreid {tuple(a.shape)} reidkit {tuple(b.shape)} max |diff| {diff:.3g} "
                  f"(max |embedding| {a.abs().max().item():.3g})")
    print(f"worst {worst:.3g}; tolerance {args.tolerance:g}: {'OK' if worst <= args.tolerance else 'FAILED'}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
