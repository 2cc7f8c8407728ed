"""Supervised training (one model, a weighted loss mapping) and mutual learning (peers).

Both apply the config's ``loss`` mapping to every model. Every loss is built and validated when
the run starts; a loss's ``start_epoch`` switches it on from that (0-based) epoch (MSP-CNN's
two-stage schedule). With ``msgr.weight > 0`` the multi-scale gradient regulariser of AMSFL
(:mod:`reidkit.engine.msgr`) is added to the loss by double back-propagation. The Siamese pair
training of MSP-CNN is this method with the ``pairs`` sampler; its pair losses state the layout
they need, and a run whose sampler gives another layout is refused at start.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from ...losses import build_loss
from ...losses.mutual import deep_mutual_loss, metric_mutual_loss
from ...models import ReIDOutput
from ..runtime import autocast
from . import register_method
from .base import Batch, MethodContext, TrainingMethod, as_float, build_model


def model_configs(cfg) -> list:
    """The model section of each model trained: ``[cfg.model]``, or the mutual-learning peers.

    A model without ``init_seed`` is initialised from ``seed`` (a single model) or
    ``seed + index`` (peer ``index``).

    Raises:
        ConfigError: a peer entry is not a valid model section.
    """
    from ..config import ModelConfig, section_from_dict

    if not cfg.mutual.peers:
        return [dataclasses.replace(cfg.model, init_seed=_default(cfg.model.init_seed, cfg.seed))]
    peers = []
    for i, entry in enumerate(cfg.mutual.peers):
        peer = section_from_dict(ModelConfig, entry, f"mutual.peers[{i}]")
        peers.append(dataclasses.replace(peer, init_seed=_default(peer.init_seed, cfg.seed + i)))
    return peers


def _default(value, fallback):
    return fallback if value is None else value


def split_loss_spec(spec: dict) -> tuple[dict, dict[str, int]]:
    """``(loss options without start_epoch, start epoch of each loss)`` of a ``loss`` mapping."""
    options, starts = {}, {}
    for name, entry in spec.items():
        entry = dict(entry or {})
        starts[name] = entry.pop("start_epoch", 0)
        options[name] = entry
    return options, starts


@register_method("supervised")
class SupervisedMethod(TrainingMethod):
    """One model trained with the ``loss`` mapping on labelled batches (today's default).

    Raises:
        ConfigError: ``mutual.peers`` is set (use ``method.name: mutual``), or no loss starts at
            epoch 0.
    """

    def __init__(self, ctx: MethodContext):
        from ..config import ConfigError

        super().__init__(ctx)
        cfg = ctx.cfg
        configs = model_configs(cfg)
        if len(configs) != self.num_models_expected(len(configs)):
            raise ConfigError(f"method.name {type(self).__name__}: mutual.peers needs method.name 'mutual' (or 'auto')")
        self._models = nn.ModuleList([build_model(m, ctx.num_classes, ctx.device) for m in configs])
        options, self.start_epochs = split_loss_spec(cfg.loss)
        if not any(e == 0 for e in self.start_epochs.values()):
            raise ConfigError("loss: at least one loss must start at epoch 0 (start_epoch: 0)")
        self.criterion = build_loss(options)
        self.msgr, self.amp, self.device = cfg.msgr, cfg.train.amp, ctx.device
        self._active: set[str] | None = None

    def num_models_expected(self, given: int) -> int:
        return 1

    @property
    def models(self) -> nn.ModuleList:
        return self._models

    def required_layouts(self) -> dict[str, str]:
        return self.criterion.required_layouts()

    def on_epoch_start(self, epoch: int) -> None:
        """Switch on the losses whose ``start_epoch`` has come (logged when the set changes)."""
        active = {name for name, start in self.start_epochs.items() if start <= epoch}
        if self._active is not None and active != self._active:
            self.ctx.log(f"epoch {epoch + 1}: losses now {sorted(active)}")
        self._active = active
        self.criterion.set_active(active)

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Forward every model on the batch; the total loss and each part (floats).

        Parts: each loss by name (``peer{i}.<name>`` with peers), ``dml`` / ``metric_mutual``
        with peers, ``msgr`` when the regulariser is on.
        """
        images, msgr = batch.images, self.msgr
        if msgr.weight > 0 and msgr.include_input:
            images.requires_grad_(True)
        with autocast(self.device, self.amp):
            outputs = [self.forward_of(i)(images) for i in range(len(self._models))]
        outputs = [as_float(o) for o in outputs]
        total, parts = self.losses(outputs, batch.pids)
        if msgr.weight > 0:
            penalty = self._msgr_penalty(total, images, outputs)
            parts["msgr"] = float(penalty.detach())
            total = total + msgr.weight * penalty
        return total, parts

    def losses(self, outputs: list[ReIDOutput], pids: Tensor) -> tuple[Tensor, dict]:
        return self.criterion(outputs[0], pids)

    def _msgr_penalty(self, total: Tensor, images: Tensor, outputs: list[ReIDOutput]) -> Tensor:
        from ..msgr import msgr_penalty, select_msgr_inputs

        msgr, inputs = self.msgr, []
        for i, out in enumerate(outputs):
            with_input = msgr.include_input and i == 0  # the shared input image counts once
            inputs += select_msgr_inputs(images, out.feature_maps, msgr.stages, with_input)
        scaler = self.ctx.scaler
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        return msgr_penalty(total, inputs, msgr.norm, grad_scale=scale)


@register_method("mutual")
class MutualMethod(SupervisedMethod):
    """The ``mutual.peers`` trained together on one shared batch per step: each peer's loss
    mapping plus deep mutual learning (KL on class probabilities, Zhang et al. 2018) and metric
    mutual learning (AlignedReID) weighted by ``mutual.dml_weight`` / ``mutual.metric_weight``.
    One optimiser over all peers equals one optimiser per peer (Adam/SGD act per parameter).

    Raises:
        ConfigError: fewer than 2 peers.
    """

    def num_models_expected(self, given: int) -> int:
        from ..config import ConfigError

        if given < 2:
            raise ConfigError("method 'mutual' needs mutual.peers with at least 2 model sections")
        return given

    def losses(self, outputs: list[ReIDOutput], pids: Tensor) -> tuple[Tensor, dict]:
        total, parts = 0.0, {}
        for i, out in enumerate(outputs):
            t, p = self.criterion(out, pids)
            total = total + t
            parts.update({f"peer{i}.{k}": v for k, v in p.items()})
        mutual = self.ctx.cfg.mutual
        if all(o.logits is not None for o in outputs):
            dml = deep_mutual_loss([o.logits for o in outputs])
            parts["dml"] = float(dml.detach())
            total = total + mutual.dml_weight * dml
        mml = metric_mutual_loss([o.feature for o in outputs])
        parts["metric_mutual"] = float(mml.detach())
        return total + mutual.metric_weight * mml, parts
