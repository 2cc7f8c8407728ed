"""Evaluation reports: what a ranking evaluation hides behind rank-1 and mAP.

```python
from reidkit.report import build_report, write_report_html, tpr_at_fpr

report = build_report(distmat, q_pids, g_pids, q_camids, g_camids)   # distmat: smaller is closer
report.operating_points[0].tpr, report.operating_points[0].threshold  # TPR at FPR 1e-2 and its distance
write_report_html(report, "report.html", query_paths=q_paths, gallery_paths=g_paths)
```

:mod:`reidkit.report.metrics` computes the numbers (pure functions, tested against plain
references): pair distance distributions, verification ROC with TPR at a false positive rate and
the distance threshold that achieves it, per-query AP (the worst queries), rank-1 per camera pair.
:mod:`reidkit.report.render` draws them (matplotlib, the ``report`` extra) into PNG files or one
self-contained HTML page. :mod:`reidkit.report.runs` reads finished runs for ``reidkit compare``.
"""

from reidkit.report.build import EvaluationReport, build_report
from reidkit.report.metrics import (
    DEFAULT_FPRS,
    CameraPairTable,
    OperatingPoint,
    PairDistances,
    QueryScores,
    RocCurve,
    camera_pair_rank1,
    pair_distances,
    per_query_scores,
    roc_curve,
    tpr_at_fpr,
    worst_queries,
)
from reidkit.report.render import cmc_png, render_report_html, write_report_html, write_report_pngs
from reidkit.report.runs import RunReadError, RunSummary, read_run, results_beside

__all__ = [
    "DEFAULT_FPRS",
    "CameraPairTable",
    "EvaluationReport",
    "OperatingPoint",
    "PairDistances",
    "QueryScores",
    "RocCurve",
    "RunReadError",
    "RunSummary",
    "build_report",
    "camera_pair_rank1",
    "cmc_png",
    "pair_distances",
    "per_query_scores",
    "read_run",
    "render_report_html",
    "results_beside",
    "roc_curve",
    "tpr_at_fpr",
    "worst_queries",
    "write_report_html",
    "write_report_pngs",
]
