"""PAUL: patch-based unsupervised learning (Yang et al., "Patch-Based Discriminative Feature
Learning for Unsupervised Person Re-identification", CVPR 2019; seed 003; METHODS.md section 5).

Two stages, two methods:

* ``paul_source``: the PatchNet (:mod:`reidkit.models.paul`) trained **with labels** on a source
  dataset, as the authors' supervised net: the sum over the M patches of each patch classifier's
  cross-entropy, plus ``triplet_weight`` times a batch-hard triplet loss (Euclidean distance of
  L2-normalised descriptors, margin ``triplet_margin``) on the descriptor. The authors' code uses
  0.1 and 1.0; it also schedules per-part learning rates (the patch generator's rate is 0 for
  epochs 0-24), which reidkit leaves to the single optimiser (a documented simplification).
* ``paul``: the target stage, **without labels**. The source stage's weights are loaded
  (``source_checkpoint``), the patch generator is frozen, and the rest learns with
  ``L = L_PEDAL + ipfl_weight * L_IPFL`` on batches of B images and their B augmented copies:
  PEDAL against a memory bank holding every training image's M patch features (k nearest,
  scale s, momentum update after each step), IPFL a triplet loss on the descriptors with the
  augmented copy as positive and the hardest cyclic-ranking negative. The bank is filled by one
  pass over the training images before the first epoch (the authors' code does the same) and
  lives in every checkpoint. The trainer hands this method pids of -1, so the target's labels
  never reach a loss; its sampler must be the label-free ``random`` one.

Defaults (sources in :mod:`reidkit.models.paul` / :mod:`reidkit.losses.pedal`): k = 10,
s = 30 (the paper's Market-1501 value; 10 on DukeMTMC), l = 0.1, margin 2, r = 3,
ipfl_weight = 2 (the paper; the authors' code weighs PEDAL by 2 and IPFL by 1 instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...losses import BatchHardMiner, EuclideanDistance, TripletLoss
from ...losses.ipfl import IPFLLoss
from ...losses.pedal import PatchMemoryBank
from ..runtime import autocast
from . import register_method
from .base import Batch, MethodContext, TrainingMethod, as_float, build_model


def _patchnet(ctx: MethodContext, num_classes: int):
    from ...models.paul import PatchNet
    from ..config import ConfigError
    from .supervised import model_configs

    mcfg = model_configs(ctx.cfg)[0]
    model = build_model(mcfg, num_classes, ctx.device)
    if not isinstance(model, PatchNet):
        raise ConfigError(f"model.name {mcfg.name!r}: PAUL needs a PatchNet model (paul_resnet50, paul_mobilenet_v2)")
    return model


@register_method("paul_source")
class PAULSourceMethod(TrainingMethod):
    """PAUL's supervised source stage (see the module docstring).

    Args:
        ctx: the run's context (labelled training data).
        triplet_weight: weight of the batch-hard triplet term (0.1, the authors' code).
        triplet_margin: its margin on normalised descriptors (1.0).

    Raises:
        ConfigError: the model is not a PatchNet.
    """

    def __init__(self, ctx: MethodContext, triplet_weight: float = 0.1, triplet_margin: float = 1.0):
        super().__init__(ctx)
        self._models = nn.ModuleList([_patchnet(ctx, ctx.num_classes)])
        self.triplet = TripletLoss(triplet_margin, distance=EuclideanDistance(normalize=True), mining=BatchHardMiner())
        self.triplet_weight, self.device, self.amp = float(triplet_weight), ctx.device, ctx.cfg.train.amp

    @property
    def models(self) -> nn.ModuleList:
        return self._models

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Sum over patches of cross-entropy (``patch_ce``) + weighted triplet (``triplet``)."""
        with autocast(self.device, self.amp):
            out = self.forward_of(0, "forward_patches")(batch.images)
        logits = out.patch_logits.float()  # (B, M, K)
        m = logits.shape[1]
        ce = F.cross_entropy(logits.flatten(0, 1), batch.pids.repeat_interleave(m)) * m
        tri = self.triplet(out.embedding.float(), batch.pids)
        return ce + self.triplet_weight * tri, {"patch_ce": float(ce.detach()), "triplet": float(tri.detach())}


@register_method("paul")
class PAULMethod(TrainingMethod):
    """PAUL's unsupervised target stage (see the module docstring).

    Args:
        ctx: the run's context; ``ctx.train_ds.train`` are the target images (labels unused).
        source_checkpoint: a reidkit checkpoint of the ``paul_source`` stage (``None``: the
            model's own initialisation, e.g. only ImageNet weights; the paper starts from the
            source stage).
        k: PEDAL's nearest memory entries (10).
        scale: PEDAL's inverse temperature s on cosine similarities (30).
        momentum: the memory update rate l (0.1).
        ipfl_weight: lambda of ``L_PEDAL + lambda * L_IPFL`` (2).
        margin: IPFL's triplet margin (2).
        r: IPFL's cyclic-ranking neighbourhood (3).
        view: options of :func:`reidkit.data.paul_augment.positive_view_transform` (crop scale
            0.7-0.95, rotation 10 degrees, colour jitter 0.2 by default).

    Raises:
        ConfigError: the model is not a PatchNet.
        CheckpointError: ``source_checkpoint`` is unreadable or its weights do not fit the model.
    """

    uses_labels = False
    needs_views = True
    sampler_layouts = ("random",)
    supports_distributed = False  # the memory bank is per process; gathering its updates is not built

    def __init__(self, ctx: MethodContext, source_checkpoint: str | None = None, k: int = 10, scale: float = 30.0,
                 momentum: float = 0.1, ipfl_weight: float = 2.0, margin: float = 2.0, r: int = 3,
                 view: dict | None = None):
        super().__init__(ctx)
        model = _patchnet(ctx, 0)
        if source_checkpoint is not None:
            _load_source(model, source_checkpoint)
        model.freeze_patch_generator()
        self._models = nn.ModuleList([model])
        self.bank = PatchMemoryBank(len(ctx.train_ds.train), model.num_patches, model.patch_dim, k, scale, momentum)
        self.bank.to(ctx.device)
        self.ipfl = IPFLLoss(margin, r)
        self.ipfl_weight, self.view = float(ipfl_weight), dict(view or {})
        self.device, self.amp, self._pending = ctx.device, ctx.cfg.train.amp, None

    @property
    def models(self) -> nn.ModuleList:
        return self._models

    def train_transform(self, base):
        from ...data.paul_augment import TwoViews, positive_view_transform

        data = self.ctx.cfg.data
        return TwoViews(base, positive_view_transform(data.height, data.width, **self.view))

    @torch.no_grad()
    def prepare(self, loader) -> None:
        """Fill the memory bank: one pass over every training image (test transform, model in
        train mode as the authors' code, no gradients)."""
        from ...data.loader import eval_loader
        from ...data.transforms import TransformConfig, build_transforms

        data, model = self.ctx.cfg.data, self._models[0]
        fill = eval_loader(self.ctx.train_ds.train, self.ctx.train_ds.load_image,
                           build_transforms(TransformConfig(height=data.height, width=data.width), train=False),
                           batch_size=max(2, data.eval_batch_size), num_workers=data.num_workers)
        model.train()
        for images, _pids, _camids, indices in fill:
            with autocast(self.device, self.amp):
                feats = model.forward_train(images.to(self.device)).local_feature
            self.bank.fill(feats.float(), indices.to(self.device))

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """PEDAL on the images' patches + weighted IPFL between images and their views."""
        b = batch.images.shape[0]
        with autocast(self.device, self.amp):
            out = self.forward_of(0)(torch.cat([batch.images, batch.views]))
        out = as_float(out)
        anchor, positive = out.embedding.split(b)
        patches = out.local_feature[:b]  # (B, M, d)
        pedal = self.bank.loss(patches, batch.indices)
        ipfl = self.ipfl(anchor, positive)
        self._pending = (patches.detach(), batch.indices)
        return pedal + self.ipfl_weight * ipfl, {"pedal": float(pedal.detach()), "ipfl": float(ipfl.detach())}

    def after_step(self) -> None:
        """The memory bank's momentum update with the step's patch features."""
        if self._pending is not None:
            self.bank.update(*self._pending)
            self._pending = None


def _load_source(model, path: str) -> None:
    """Load a ``paul_source`` checkpoint into ``model`` (its patch classifiers are dropped)."""
    from ..checkpoint import load_checkpoint, load_model_state

    ckpt = load_checkpoint(path)
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith("head.classifiers.")}
    load_model_state(model, state, f"method.options.source_checkpoint {path!r}")
