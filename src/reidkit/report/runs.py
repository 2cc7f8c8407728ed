"""What a finished run or checkpoint says about itself, for ``reidkit compare`` and model cards.

Sources, read without running anything from them:

* a run folder (``reidkit train --output RUN``): ``config.yaml`` (model, datasets),
  ``results.json`` (the final evaluation: rank-k, mAP, mINP, epochs, train minutes), else the
  last evaluated line of ``metrics.jsonl``; and ``eval.json`` when present, as written by
  ``reidkit eval --checkpoint RUN/last.pt --json RUN/eval.json``.
* an evaluation JSON file (``reidkit eval --json``): its metrics, ``dataset`` and ``cmc``.
* a checkpoint (``.pt``, read with ``weights_only=True``): its stored config and log; a run's
  ``last.pt`` also reads the ``results.json`` / ``eval.json`` beside it.

A CMC curve is only known when a JSON file stores it as ``cmc`` (``reidkit eval --json`` does;
the trainer's ``results.json`` holds the headline numbers only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
EVAL_JSON = "eval.json"


class RunReadError(ValueError):
    """A run folder, evaluation JSON or checkpoint that cannot be summarised; names the path."""


@dataclass(frozen=True, eq=False)
class RunSummary:
    """One row of ``reidkit compare``.

    Attributes:
        label: how the run is named (the folder name, or the file name).
        source: the path given.
        model: model name, when known.
        trained_on: training dataset name, when known (``None`` for an untrained model).
        evaluated_on: evaluation dataset name, when known.
        metrics: fractions in [0, 1] among :data:`METRIC_KEYS`.
        cmc: ``(max_rank,)`` float64 CMC curve, or ``None`` when no file stores one.
        epochs: epochs trained, when known.
        train_minutes: training wall clock in minutes, when known.
    """

    label: str
    source: str
    model: str | None = None
    trained_on: str | None = None
    evaluated_on: str | None = None
    metrics: dict | None = None
    cmc: np.ndarray | None = None
    epochs: int | None = None
    train_minutes: float | None = None


def _read_json(path: Path) -> dict:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunReadError(f"cannot read {str(path)!r}: {err}") from None
    if not isinstance(body, dict):
        raise RunReadError(f"{str(path)!r} does not hold a JSON object")
    return body


def _metrics(body: dict, path: Path) -> dict:
    out = {}
    for key in METRIC_KEYS:
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise RunReadError(f"{str(path)!r}: {key} must be a fraction in [0, 1], got {value!r}")
        out[key] = float(value)
    return out


def _cmc(body: dict, path: Path) -> np.ndarray | None:
    cmc = body.get("cmc")
    if cmc is None:
        return None
    ok = isinstance(cmc, list) and cmc and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in cmc)
    if not ok:
        raise RunReadError(f"{str(path)!r}: 'cmc' must be a non-empty list of fractions in [0, 1]")
    return np.asarray(cmc, dtype=np.float64)


def _config_names(config: dict) -> dict:
    model = (config.get("model") or {}).get("name") if isinstance(config.get("model"), dict) else None
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    trained = data.get("name")
    return {"model": model, "trained_on": trained, "evaluated_on": data.get("eval_name") or trained}


def _read_config(path: Path) -> dict:
    from ..engine.config import ConfigError, parse_yaml

    try:
        body = parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ConfigError) as err:
        raise RunReadError(f"cannot read {str(path)!r}: {err}") from None
    return body if isinstance(body, dict) else {}


def _last_evaluated(records: list) -> dict:
    """The last log record that holds an evaluation (rank1)."""
    for record in reversed(records):
        if isinstance(record, dict) and "rank1" in record:
            return record
    return {}


def _read_log(path: Path) -> list:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RunReadError(f"cannot read {str(path)!r}: {err}") from None
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line a killed run left half-written
    return records


def _merge(base: dict, path: Path) -> dict:
    """``base`` updated from an evaluation JSON at ``path`` (metrics, dataset, cmc)."""
    body = _read_json(path)
    found = {"metrics": _metrics(body, path) or base.get("metrics"), "cmc": _cmc(body, path)}
    if isinstance(body.get("dataset"), str):
        found["evaluated_on"] = body["dataset"]
    for key in ("epochs", "train_minutes"):
        if isinstance(body.get(key), (int, float)) and not isinstance(body.get(key), bool):
            found[key] = body[key]
    return {**base, **{k: v for k, v in found.items() if v is not None}}


def read_run(path: str | Path) -> RunSummary:
    """Summarise a run folder, an evaluation JSON file or a checkpoint (see the module docstring).

    Raises:
        RunReadError: the path is missing, of another kind, or holds nothing to compare (the
            message names the path and what was looked for).
        reidkit.engine.checkpoint.CheckpointError: an unreadable or unsafe checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        fields = _read_folder(path)
    elif path.is_file() and path.suffix.lower() == ".json":
        fields = _merge(_config_beside(path), path)
    elif path.is_file() and path.suffix.lower() in (".pt", ".pth"):
        fields = _read_checkpoint(path)
    elif not path.exists():
        raise RunReadError(f"{str(path)!r} does not exist")
    else:
        raise RunReadError(f"{str(path)!r} is not a run folder, an evaluation .json or a checkpoint .pt")
    if not fields.get("metrics"):
        raise RunReadError(f"{str(path)!r} holds no evaluation (no rank1/mAP in results.json, metrics.jsonl, "
                           f"{EVAL_JSON} or the checkpoint's log); run reidkit eval ... --json {EVAL_JSON}")
    label = path.name if path.is_dir() or path.name != "last.pt" else path.parent.name
    return RunSummary(label=label, source=str(path), **fields)


def _config_beside(path: Path) -> dict:
    config = path.parent / "config.yaml"
    return _config_names(_read_config(config)) if config.is_file() else {}


def _read_folder(folder: Path) -> dict:
    fields = _config_beside(folder / "x")
    log = folder / "metrics.jsonl"
    if log.is_file():
        record = _last_evaluated(_read_log(log))
        fields.update(metrics=_metrics(record, log) or None, epochs=record.get("epochs", record.get("epoch")))
    for name in ("results.json", EVAL_JSON):
        if (folder / name).is_file():
            fields = _merge(fields, folder / name)
    return fields


def _read_checkpoint(path: Path) -> dict:
    from ..engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    fields = _config_names(config)
    fields["model"] = fields.get("model") or ckpt.get("model_name")
    record = _last_evaluated(ckpt.get("log") or [])
    fields.update(metrics=_metrics(record, path) or None, epochs=ckpt.get("epoch"))
    if path.name == "last.pt":
        for name in ("results.json", EVAL_JSON):
            if (path.parent / name).is_file():
                fields = _merge(fields, path.parent / name)
    return fields


def results_beside(checkpoint: str | Path) -> dict:
    """Metrics of the ``results.json`` / ``eval.json`` beside a checkpoint (``{}`` when none or
    unreadable): what a model card shows."""
    folder = Path(checkpoint).parent
    for name in (EVAL_JSON, "results.json"):
        try:
            body = _read_json(folder / name)
            metrics = _metrics(body, folder / name)
        except RunReadError:
            continue
        if metrics:
            return {"metrics": metrics, "file": str(folder / name), "dataset": body.get("dataset")}
    return {}
