"""``reidkit demo``: the main job on the embedded synthetic dataset, end to end, in a few minutes.

Evaluates the untrained model, trains it briefly with the recipe ``recipes/demo_synthetic.yaml``
(shipped inside the package), evaluates again and draws the ranked lists of a few queries.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch


from .engine.config import apply_overrides, config_from_dict, parse_yaml
from .engine.evaluate import evaluate_features, extract_split
from .engine.trainer import Trainer
from .evaluation import compute_distance_matrix
from .fileio import atomic_write_text
from .models import create_model
from .visualize import ranked_list_grid


def demo_config(minutes: float | None = None, overrides: list[str] | None = None):
    """The demo recipe as a :class:`~reidkit.engine.config.Config`.

    Args:
        minutes: replaces the recipe's training budget ``train.max_minutes``.
        overrides: ``section.key=value`` strings applied to the recipe.
    """
    text = resources.files("reidkit").joinpath("recipes/demo_synthetic.yaml").read_text()
    cfg = config_from_dict(apply_overrides(parse_yaml(text), overrides or []))
    if minutes is not None:
        cfg.train.max_minutes = minutes
    return cfg


def draw_ranked_lists(model, dataset, cfg, device, path, num_queries: int = 4, topk: int = 8) -> Path:
    """PNG of the first ``num_queries`` queries (one per identity) with their top-``topk``."""
    q = extract_split(model, dataset, "query", cfg, device)
    g = extract_split(model, dataset, "gallery", cfg, device)
    qf, gf = q.features, g.features
    if cfg.eval.normalize:
        qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    dist = compute_distance_matrix(qf, gf, metric=cfg.eval.metric)  # (num_query, num_gallery)
    chosen, seen = [], set()
    for i, s in enumerate(dataset.query):
        if s.pid not in seen:
            chosen.append(i)
            seen.add(s.pid)
        if len(chosen) == num_queries:
            break
    rows = []
    for qi in chosen:
        qs = dataset.query[qi]
        keep = [j for j, s in enumerate(dataset.gallery) if not (s.pid == qs.pid and s.camid == qs.camid)]
        order = sorted(keep, key=lambda j: (dist[qi, j].item(), j))[:topk]
        rows.append((
            dataset.load_image(qs.img_path),
            [dataset.load_image(dataset.gallery[j].img_path) for j in order],
            [dist[qi, j].item() for j in order],
            [dataset.gallery[j].pid == qs.pid for j in order],
        ))
    return ranked_list_grid(rows, path)


def run_demo(
    output: str | Path = "runs/demo", minutes: float | None = None, overrides: list[str] | None = None, log=print,
    overwrite: bool = False,
) -> dict:
    """Evaluate untrained, train, evaluate trained; write ``demo.json`` and ``ranked_lists.png``.

    A folder holding ``last.pt`` is resumed; ``overwrite`` replaces the run files of a folder.

    Returns:
        ``{"untrained": metrics, "trained": metrics}`` with fractions in [0, 1].
    """
    cfg = demo_config(minutes, overrides)
    output = Path(output)
    resume = (output / "last.pt").exists() and not overwrite
    trainer = Trainer(cfg, output, resume=resume, overwrite=overwrite, log=log)
    eval_ds = trainer.eval_ds
    untrained = create_model(cfg.model.name, num_classes=0, **cfg.model.kwargs)
    before = evaluate_features(
        extract_split(untrained, eval_ds, "query", cfg, trainer.device),
        extract_split(untrained, eval_ds, "gallery", cfg, trainer.device),
        cfg,
    ).as_dict()
    after = trainer.fit()
    picture = draw_ranked_lists(trainer.model, eval_ds, cfg, trainer.device, output / "ranked_lists.png")
    summary = {"untrained": before, "trained": after}
    atomic_write_text(output / "demo.json", json.dumps(summary, indent=2))
    log("\n              rank-1   rank-5   mAP     mINP")
    for name, m in summary.items():
        log(f"  {name:<10} {100 * m['rank1']:6.2f}%  {100 * m['rank5']:6.2f}%  {100 * m['mAP']:6.2f}%  {100 * m['mINP']:6.2f}%")
    log(f"ranked lists of 4 queries: {picture}   (green frame = same identity)")
    return summary
