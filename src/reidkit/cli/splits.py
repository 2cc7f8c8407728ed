"""``reidkit splits``: train and evaluate one recipe on several identity splits (CUHK01's 10).

The classic CUHK01 / CUHK03 tables average over 10 random train/test identity splits. This
command runs ``reidkit train CONFIG`` once per split id (``data.options.split_id``, and
``data.eval_options.split_id`` when the recipe evaluates on another dataset), each in
``OUTPUT/split<i>``, then prints and writes (``OUTPUT/splits.json``) the mean and standard
deviation over the splits of rank-1/5/10/20, mAP and mINP. A split whose ``results.json``
exists is not trained again and an interrupted split resumes from its ``last.pt``, so the
command can be re-run after a kill. With ``--set eval.single_shot_repeats=10`` each split is
scored single-gallery-shot (:mod:`reidkit.evaluation.protocols`), the classic CUHK01 reading.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ._common import UsageError, add_config_overrides

_REPORTED = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def parse_split_ids(text: str) -> list[int]:
    """``"0-9"`` / ``"0,2,5"`` / ``"3"`` -> sorted distinct split ids.

    Raises:
        UsageError: anything else, or a negative id.
    """
    ids: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise UsageError(f"--splits {text!r}: expected split ids like 0-9, 0,3,5 or 4")
        low = int(m.group(1))
        ids.update(range(low, int(m.group(2) or low) + 1))
    return sorted(ids)


def _run_one(config: str, overrides: list[str], folder: Path, split_id: int, with_eval: bool) -> dict:
    from ..engine.config import load_config
    from ..engine.trainer import Trainer

    done = folder / "results.json"
    if done.is_file():
        try:
            return json.loads(done.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UsageError(f"{done}: not a readable results file ({err}); delete it to train split {split_id} again")
    extra = [f"data.options.split_id={split_id}"]
    if with_eval:
        extra.append(f"data.eval_options.split_id={split_id}")
    cfg = load_config(config, [*overrides, *extra])
    resume = (folder / "last.pt").is_file()
    # a split folder without last.pt holds only what an earlier, killed call wrote before its first
    # checkpoint (config.yaml): nothing to keep
    overwrite = not resume and folder.is_dir()
    print(f"split {split_id}: {'resuming' if resume else 'training'} in {folder}", flush=True)
    return Trainer(cfg, folder, resume=resume, overwrite=overwrite).fit()


def summarize(results: dict[int, dict]) -> dict:
    """``{"splits": [...], "mean": {...}, "std": {...}}`` over the reported metrics."""
    from ..evaluation.protocols import mean_and_std

    table = mean_and_std([{k: r[k] for k in _REPORTED if k in r} for r in results.values()])
    return {
        "splits": sorted(results),
        "mean": {k: v[0] for k, v in table.items()},
        "std": {k: v[1] for k, v in table.items()},
        "per_split": {str(i): {k: r[k] for k in _REPORTED if k in r} for i, r in sorted(results.items())},
    }


def cmd_splits(args) -> int:
    from ..engine.config import load_config
    from ..fileio import atomic_write_text, ensure_writable_dir

    ids = parse_split_ids(args.splits)
    cfg = load_config(args.config, args.set)  # a bad recipe fails before any training
    if "split_id" in (cfg.data.options or {}):
        print(f"{args.config}: data.options.split_id={cfg.data.options['split_id']} is replaced by each split's id")
    out = Path(args.output)
    ensure_writable_dir(out)
    with_eval = bool(cfg.data.eval_name)
    results = {i: _run_one(args.config, args.set, out / f"split{i}", i, with_eval) for i in ids}
    summary = summarize(results)
    atomic_write_text(out / "splits.json", json.dumps(summary, indent=2))
    keys = [k for k in _REPORTED if k in summary["mean"]]
    print(f"{len(ids)} split(s) {args.splits}: mean +- std (%)")
    print("  ".join(f"{k} {100 * summary['mean'][k]:.1f} +- {100 * summary['std'][k]:.1f}" for k in keys))
    print(f"wrote {out / 'splits.json'}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "splits", help="train and evaluate a recipe on several identity splits (e.g. CUHK01's 10); mean and std",
    )
    p.add_argument("config", help="YAML recipe whose dataset takes split_id (e.g. cuhk01)")
    p.add_argument("--splits", default="0-9", help="split ids: 0-9 (default), 0,3,5 or 4")
    p.add_argument("--output", required=True, help="folder for split<i>/ runs and splits.json (re-run to resume)")
    add_config_overrides(p)
    p.set_defaults(func=cmd_splits)
