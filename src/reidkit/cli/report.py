"""``reidkit compare RUN_A RUN_B ...``: a table and overlaid CMC curves of finished runs.

Each argument is a run folder, an evaluation JSON (``reidkit eval --json``) or a checkpoint; see
:mod:`reidkit.report.runs` for what is read. CMC curves come from a ``cmc`` list in a JSON file:
``reidkit eval --checkpoint RUN/last.pt --json RUN/eval.json`` stores one, and ``compare RUN``
finds it there. (``reidkit eval --report`` is in :mod:`reidkit.cli.evaluate`.)
"""

from __future__ import annotations

import dataclasses
import json

from ._common import UsageError, output_file

_COLUMNS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def _cell(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(runs) -> str:
    """The comparison as aligned text: one row per :class:`~reidkit.report.RunSummary`."""
    head = ["run", "model", "trained on", "evaluated on", "epochs", *(f"{c} %" for c in _COLUMNS)]
    rows = [[r.label, r.model or "-", r.trained_on or "-", r.evaluated_on or "-",
             "-" if r.epochs is None else str(r.epochs), *(_cell((r.metrics or {}).get(c)) for c in _COLUMNS)]
            for r in runs]
    widths = [max(len(str(x)) for x in column) for column in zip(head, *rows)]
    lines = ["  ".join(str(x).ljust(w) if i < 5 else str(x).rjust(w) for i, (x, w) in enumerate(zip(line, widths)))
             for line in [head, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _labels(runs) -> list[str]:
    """Run labels, made unique with their paths when two share a name."""
    names = [r.label for r in runs]
    return [r.source if names.count(r.label) > 1 else r.label for r in runs]


def cmd_compare(args) -> int:
    from ..fileio import atomic_write, atomic_write_text, ensure_writable_file
    from ..report import cmc_png, read_run

    for path, flag in ((args.output, "--output"), (args.json, "--json")):
        if path:
            ensure_writable_file(path, flag)
    runs = [read_run(path) for path in args.runs]
    if args.labels:
        if len(args.labels) != len(runs):
            raise UsageError(f"--labels gives {len(args.labels)} names for {len(runs)} runs")
    names = args.labels or _labels(runs)
    runs = [dataclasses.replace(r, label=name) for r, name in zip(runs, names)]
    print(format_table(runs))
    curves = {r.label: r.cmc for r in runs if r.cmc is not None}
    missing = [r.label for r in runs if r.cmc is None]
    if args.output:
        if not curves:
            raise UsageError("no run stores a CMC curve; write one with reidkit eval --checkpoint RUN/last.pt "
                             "--json RUN/eval.json, then compare RUN again")
        png = cmc_png(curves, title="CMC")
        atomic_write(args.output, lambda handle: handle.write(png))
        print(f"wrote {args.output}" + (f" (no CMC stored for {', '.join(missing)}: run reidkit eval ... "
                                         "--json RUN/eval.json)" if missing else ""))
    if args.json:
        body = [{"label": r.label, "source": r.source, "model": r.model, "trained_on": r.trained_on,
                 "evaluated_on": r.evaluated_on, "epochs": r.epochs, "train_minutes": r.train_minutes,
                 "metrics": r.metrics, "cmc": None if r.cmc is None else r.cmc.tolist()} for r in runs]
        atomic_write_text(args.json, json.dumps(body, indent=2))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("compare", help="table and overlaid CMC curves of runs, eval JSON files or checkpoints")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder, reidkit eval --json file, or checkpoint .pt")
    p.add_argument("--output", type=output_file(".png"), help="write the overlaid CMC curves to this PNG")
    p.add_argument("--json", type=output_file(".json"), help="also write the table as JSON")
    p.add_argument("--labels", nargs="+", help="names of the runs in the table and legend (one per RUN)")
    p.set_defaults(func=cmd_compare)
