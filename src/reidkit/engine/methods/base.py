"""The contract every training method follows, and what the trainer hands it."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ...data import ReIDDataset
from ...models import ReIDModel, ReIDOutput, create_model


class Batch(NamedTuple):
    """One training batch as the trainer hands it to :meth:`TrainingMethod.training_step`.

    Attributes:
        images: ``(B, 3, H, W)`` float, normalised.
        pids: ``(B,)`` int64 training labels in ``[0, num_classes)``; all ``-1`` for a method
            with ``uses_labels = False`` (the trainer blanks them: labels cannot leak).
        camids: ``(B,)`` int64 camera ids.
        indices: ``(B,)`` int64 positions of the images in ``dataset.train``.
        views: ``(B, 3, H, W)`` augmented copies of ``images`` for a method with
            ``needs_views = True``, else ``None``.
    """

    images: Tensor
    pids: Tensor
    camids: Tensor
    indices: Tensor
    views: Tensor | None = None


class MethodContext(NamedTuple):
    """What a method is built from: the validated config, the device, the training dataset,
    the number of training identities (the classifier size), a log function and the run's
    grad scaler."""

    cfg: object
    device: torch.device
    train_ds: ReIDDataset
    num_classes: int
    log: object = print
    scaler: object = None  # the run's torch.amp.GradScaler (float16 on CUDA), for gradient penalties


def build_model(mcfg, num_classes: int, device: torch.device) -> ReIDModel:
    """A model from a ``ModelConfig``, initialised from ``torch.manual_seed(mcfg.init_seed)``.

    Raises:
        ConfigError: unknown model name or keyword argument (naming ``model.name`` / ``model.kwargs``).
    """
    from ..config import ConfigError

    from ...models import WeightsFile

    torch.manual_seed(mcfg.init_seed)
    pretrained = mcfg.pretrained
    if isinstance(pretrained, str) and not mcfg.pretrained_strict:
        pretrained = WeightsFile(pretrained, strict=False)
    try:
        model = create_model(mcfg.name, num_classes=num_classes, pretrained=pretrained, **mcfg.kwargs)
    except KeyError as err:
        raise ConfigError(f"model.name: {err.args[0]}") from None
    except TypeError as err:
        raise ConfigError(f"model.kwargs of {mcfg.name!r}: {err}") from None
    return model.to(device)


def as_float(output: ReIDOutput) -> ReIDOutput:
    """Cast an autocast (bfloat16/float16) model output to float32 so losses run in full precision."""
    return output._replace(
        embedding=output.embedding.float(),
        feature=output.feature.float(),
        logits=None if output.logits is None else output.logits.float(),
        local_feature=None if output.local_feature is None else output.local_feature.float(),
    )


class TrainingMethod(nn.Module):
    """One way of training, as an ``nn.Module`` holding its models, losses and state.

    Contract (what the trainer calls):

    * :meth:`training_step` ``(batch) -> (loss, parts)``: forward, losses, a scalar to
      back-propagate and the parts to log (floats by name);
    * ``parameters()`` (``nn.Module``): everything the optimiser updates, the models' first (in
      their order), then the losses' or the method's own (e.g. learnable centres);
    * :meth:`extra_state_dict` / :meth:`load_extra_state_dict`: state beyond the models'
      weights (memory banks, centres), saved in every checkpoint so ``--resume`` is exact;
    * :meth:`on_epoch_start` ``(epoch)``: before each 0-based epoch (loss schedules);
    * :meth:`prepare` ``(loader)``: once before the first epoch of a new run (not on resume),
      e.g. to fill a memory bank;
    * :meth:`after_step`: after every optimiser step;
    * ``models``: the ``nn.ModuleList`` of models saved (``last.pt`` holds ``models[0]``,
      ``peer{i}.pt`` each when several) and evaluated;
    * a step calls its models through :meth:`forward_of` ``(i, method)``, so the trainer can
      route them through ``DistributedDataParallel`` under torchrun.

    Class attributes a method may override: ``uses_labels`` (``False``: the trainer hands
    ``pids`` of ``-1``), ``needs_views`` (``True``: batches carry an augmented view),
    ``sampler_layouts`` (the batch layouts it accepts, ``None``: any).
    """

    uses_labels: bool = True
    needs_views: bool = False
    sampler_layouts: tuple[str, ...] | None = None

    def __init__(self, ctx: MethodContext):
        super().__init__()
        self.ctx = ctx
        self.__dict__["_wrap"] = None  # plain attributes: not submodules, not in state_dict()
        self.__dict__["_outer"] = None
        self.__dict__["_wrapped"] = {}

    def distribute(self, wrap) -> None:
        """Route the models' training forward passes through ``wrap(model, method_name)``
        (``DistributedDataParallel``, :func:`reidkit.engine.distributed.data_parallel`)."""
        self.__dict__["_wrap"] = wrap
        self._wrapped.clear()

    def wrap_forwards(self, wrap) -> None:
        """Route the models' training forward passes through ``wrap(fn) -> fn`` as well, outside
        the data-parallel wrapper (``torch.compile``: :class:`reidkit.engine.speed.CompiledForward`)."""
        self.__dict__["_outer"] = wrap
        self._wrapped.clear()

    def forward_of(self, i: int, method: str = "forward_train"):
        """The callable a step uses for ``models[i].<method>(x)``: the model's own method, or
        its data-parallel wrapper once :meth:`distribute` was called (gradients are averaged
        over the processes), inside the wrapper of :meth:`wrap_forwards` when one is set."""
        if self._wrap is None and self._outer is None:
            return getattr(self.models[i], method)
        key = (i, method)
        if key not in self._wrapped:
            fn = getattr(self.models[i], method) if self._wrap is None else self._wrap(self.models[i], method)
            self._wrapped[key] = fn if self._outer is None else self._outer(fn)
        return self._wrapped[key]

    @property
    def models(self) -> nn.ModuleList:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:  # pragma: no cover
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each 0-based epoch; nothing by default."""

    def prepare(self, loader) -> None:
        """Called once before the first epoch of a new run; nothing by default."""

    def after_step(self) -> None:
        """Called after each optimiser step (e.g. a memory-bank momentum update, which must not
        change tensors the backward pass still needed); nothing by default."""

    def required_layouts(self) -> dict[str, str]:
        """``loss name -> batch layout`` the method's losses need (checked against the sampler)."""
        return {}

    def train_transform(self, base):
        """The training transform the loader applies; ``base`` is the config's augmentation.
        A method with ``needs_views`` returns one giving ``(image, view)`` pairs."""
        return base

    def extra_state_dict(self) -> dict:
        """The method's state beyond the models' weights (``state_dict()`` minus ``_models.*``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("_models.")}

    def load_extra_state_dict(self, state: dict) -> None:
        """Restore :meth:`extra_state_dict` output.

        Raises:
            ValueError: missing or unexpected entries.
        """
        own = self.extra_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"method state does not fit (missing {missing}, unexpected {unexpected})")
        self.load_state_dict({**{k: v for k, v in self.state_dict().items() if k.startswith("_models.")}, **state})
