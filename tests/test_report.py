"""Evaluation reports: every number against a plain reference, the HTML/PNG outputs, ``eval --report``
and ``reidkit compare``."""

import json
import math

import numpy as np
import pytest

from reidkit.cli import main
from reidkit.evaluation import evaluate_rank
from reidkit.report import (
    build_report,
    camera_pair_rank1,
    pair_distances,
    per_query_scores,
    read_run,
    roc_curve,
    tpr_at_fpr,
    worst_queries,
)
from reidkit.report import metrics as report_metrics


def _problem(seed=0, nq=40, ng=120, npid=15, ncam=3, ties=False):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, npid, nq), rng.integers(-1, npid, ng)  # -1: junk gallery items
    q_cams, g_cams = rng.integers(0, ncam, nq), rng.integers(0, ncam, ng)
    dist = rng.random((nq, ng))
    dist[q_pids[:, None] == g_pids[None, :]] -= 0.25
    if ties:
        dist = np.round(dist, 1)
    return dist.astype(np.float32), q_pids, g_pids, q_cams, g_cams


def _ranked(i, dist, q_pids, g_pids, q_cams, g_cams):
    """Plain reference: query i's ranked gallery indices (ties by index) and their correctness."""
    keep = [j for j in range(len(g_pids)) if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
    keep.sort(key=lambda j: (dist[i, j], j))
    return keep, [g_pids[j] == q_pids[i] for j in keep]


@pytest.fixture(params=[False, True], ids=["distinct", "ties"])
def problem(request, monkeypatch):
    monkeypatch.setattr(report_metrics, "_BLOCK_ELEMENTS", 500)  # several blocks of rows
    return _problem(ties=request.param)


def test_pair_distances_against_a_loop(problem):
    dist, qp, gp, qc, gc = problem
    pos, neg = [], []
    for i in range(len(qp)):
        for j in range(len(gp)):
            if gp[j] == -1 or (gp[j] == qp[i] and gc[j] == qc[i]):
                continue
            (pos if gp[j] == qp[i] else neg).append(float(dist[i, j]))
    pairs = pair_distances(dist, qp, gp, qc, gc)
    assert sorted(pairs.positive.tolist()) == sorted(pos)
    assert sorted(pairs.negative.tolist()) == sorted(neg)
    assert pairs.num_negative_pairs == len(neg)
    sampled = pair_distances(dist, qp, gp, qc, gc, max_negatives=len(neg) // 4, seed=1)
    assert sampled.num_negative_pairs == len(neg) and 0.1 * len(neg) < len(sampled.negative) < 0.4 * len(neg)
    assert set(sampled.negative.tolist()) <= set(neg)


def test_tpr_at_fpr_against_every_threshold(problem):
    dist, qp, gp, qc, gc = problem
    pairs = pair_distances(dist, qp, gp, qc, gc)
    pos, neg = pairs.positive, pairs.negative
    candidates = np.concatenate([np.unique(np.concatenate([pos, neg])), [np.inf]])
    for target in (0.3, 0.05, 1e-2, 1e-3):
        best = max(float(np.mean(pos < t)) for t in candidates if np.mean(neg < t) <= target)
        (point,) = tpr_at_fpr(pos, neg, [target])
        assert point.tpr == pytest.approx(best)
        assert point.fpr <= target and point.fpr == pytest.approx(float(np.mean(neg < point.threshold)))
        assert point.tpr == pytest.approx(float(np.mean(pos < point.threshold)))
        assert point.resolved == (len(neg) * target >= 1)
    assert tpr_at_fpr(pos, neg, [1.0])[0].tpr == 1.0  # everything accepted


def test_tpr_at_fpr_bad_input():
    with pytest.raises(ValueError, match="positive and negative"):
        tpr_at_fpr(np.array([0.1]), np.array([]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        tpr_at_fpr(np.array([0.1]), np.array([0.5]), [0.0])


def test_roc_curve_is_monotone_and_matches_the_rates(problem):
    dist, qp, gp, qc, gc = problem
    pairs = pair_distances(dist, qp, gp, qc, gc)
    roc = roc_curve(pairs.positive, pairs.negative, num_points=30)
    assert roc.fpr[0] == 0 and roc.fpr[-1] == 1 and roc.tpr[-1] == 1
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)
    for f, t, thr in zip(roc.fpr, roc.tpr, roc.thresholds):
        assert f == pytest.approx(np.mean(pairs.negative < thr)) and t == pytest.approx(np.mean(pairs.positive < thr))


def test_per_query_scores_against_a_loop_and_evaluate_rank(problem):
    dist, qp, gp, qc, gc = problem
    scores = per_query_scores(dist, qp, gp, qc, gc, keep_top=5)
    for i in range(len(qp)):
        order, hits = _ranked(i, dist, qp, gp, qc, gc)
        assert scores.ranked[i][: min(5, len(order))].tolist() == order[:5]
        np.testing.assert_allclose(scores.ranked_distances[i][: len(order[:5])], dist[i, order[:5]])
        if not any(hits):
            assert scores.first_rank[i] == 0 and math.isnan(scores.ap[i])
            continue
        ranks = [r + 1 for r, h in enumerate(hits) if h]
        assert scores.first_rank[i] == ranks[0]
        assert scores.ap[i] == pytest.approx(np.mean([(n + 1) / r for n, r in enumerate(ranks)]))
    reference = evaluate_rank(dist, qp, gp, qc, gc, max_rank=10)
    report = build_report(dist, qp, gp, qc, gc, max_rank=10)
    np.testing.assert_allclose(report.cmc, reference.cmc)
    assert report.metrics["mAP"] == pytest.approx(reference.mAP)
    assert report.metrics["rank1"] == pytest.approx(reference.rank(1))


def test_worst_queries_lowest_ap_first():
    dist, qp, gp, qc, gc = _problem(seed=3)
    scores = per_query_scores(dist, qp, gp, qc, gc)
    worst = worst_queries(scores, 5)
    valid = [i for i in range(len(qp)) if scores.first_rank[i] > 0]
    assert worst.tolist() == sorted(valid, key=lambda i: (scores.ap[i], i))[:5]


def test_camera_pair_rank1_against_a_loop(problem):
    dist, qp, gp, qc, gc = problem
    table = camera_pair_rank1(dist, qp, gp, qc, gc)
    for a, qcam in enumerate(table.query_cameras):
        for b, gcam in enumerate(table.gallery_cameras):
            hits = []
            for i in np.flatnonzero(qc == qcam):
                order, correct = _ranked(i, dist, qp, gp, qc, gc)
                in_cam = [c for j, c in zip(order, correct) if gc[j] == gcam]
                if any(in_cam):
                    hits.append(in_cam[0])
            assert table.num_queries[a, b] == len(hits)
            if hits:
                assert table.rank1[a, b] == pytest.approx(np.mean(hits))
            else:
                assert math.isnan(table.rank1[a, b])
        assert math.isnan(table.rank1[a, list(table.gallery_cameras).index(qcam)])  # same camera: never ranked


def test_labels_and_matrix_are_checked():
    dist, qp, gp, qc, gc = _problem()
    with pytest.raises(ValueError, match="q_pids"):
        per_query_scores(dist, qp[:-1], gp, qc, gc)
    with pytest.raises(TypeError, match="integers"):
        pair_distances(dist, qp.astype(float), gp, qc, gc)
    bad = dist.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        camera_pair_rank1(bad, qp, gp, qc, gc)
    with pytest.raises(ValueError, match="correct match"):
        build_report(dist, qp + 1000, gp, qc, gc)


def test_html_is_self_contained_and_atomic(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from reidkit.report import write_report_html, write_report_pngs

    dist, qp, gp, qc, gc = _problem(nq=12, ng=40, npid=6)
    paths = []
    for name in [f"q{i}" for i in range(12)] + [f"g{j}" for j in range(40)]:
        Image.new("RGB", (16, 32), (40, 90, 200)).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    report = build_report(dist, qp, gp, qc, gc, max_rank=10, context={"dataset": "<toy & co>"})
    out = write_report_html(report, tmp_path / "r.html", query_paths=paths[:12], gallery_paths=paths[12:])
    text = out.read_text()
    assert "&lt;toy &amp; co&gt;" in text and "<toy" not in text  # escaped
    assert text.count("data:image/png;base64,") == 4 and "data:image/jpeg;base64," in text
    assert "http://" not in text and "https://" not in text and " src=\"/" not in text
    assert f"{report.operating_points[0].threshold:.4f}" in text
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    written = write_report_pngs(report, tmp_path / "pngs", query_paths=paths[:12], gallery_paths=paths[12:])
    assert sorted(p.name for p in written) == ["camera_pairs.png", "cmc.png", "distances.png", "roc.png", "worst_queries.png"]
    assert all(Image.open(p).size[0] > 100 for p in written)


# ---------------------------------------------------------------------------- command line
def test_eval_report_and_compare(tiny_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ck = str(tiny_run / "last.pt")
    metrics, html, pngs = tmp_path / "m.json", tmp_path / "r.html", tmp_path / "pngs"
    assert main(["eval", "--checkpoint", ck, "--json", str(metrics), "--report", str(html), "--report-dir", str(pngs),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    body = json.loads(metrics.read_text())
    assert len(body["cmc"]) == 5 and body["cmc"][0] == pytest.approx(body["rank1"])  # eval.max_rank 5 in the tiny run
    assert "TPR" in out and "at FPR 0.01" in out and html.is_file() and (pngs / "roc.png").is_file()
    text = html.read_text()
    assert "synthetic" in text and "Worst queries" in text
    run = read_run(tiny_run)
    assert run.model == "osnet_x0_25" and run.trained_on == "synthetic" and run.metrics["rank1"] >= 0
    evaluated = read_run(metrics)
    assert evaluated.cmc is not None and evaluated.metrics["mAP"] == pytest.approx(body["mAP"])
    assert read_run(tiny_run / "last.pt").label == tiny_run.name
    table = tmp_path / "t.json"
    assert main(["compare", str(tiny_run), str(metrics), "--output", str(tmp_path / "cmc.png"), "--json", str(table),
                 "--labels", "trained", "evaluated"]) == 0
    out = capsys.readouterr().out
    assert "trained" in out and "evaluated" in out and "no CMC stored for trained" in out
    rows = json.loads(table.read_text())
    assert rows[1]["cmc"] == body["cmc"] and (tmp_path / "cmc.png").stat().st_size > 1000


def test_bad_report_and_compare_flags(tiny_run, tmp_path, capsys):
    ck = str(tiny_run / "last.pt")
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "wrong.json").write_text(json.dumps({"rank1": 7}))
    cases = [
        (["eval", "--checkpoint", ck, "--report", str(tmp_path / "r.txt")], "r.txt"),
        (["eval", "--checkpoint", ck, "--report-dir", str(tmp_path / "file")], "file"),
        (["eval", "--checkpoint", ck, "--report", str(tmp_path / "empty")], ".html"),
        (["compare", str(tmp_path / "nope")], "nope"),
        (["compare", str(tmp_path / "empty")], "empty"),
        (["compare", str(tmp_path / "bad.json")], "bad.json"),
        (["compare", str(tmp_path / "wrong.json")], "rank1"),
        (["compare", str(tmp_path / "file")], "file"),
        (["compare", str(tiny_run), "--output", str(tmp_path / "c.png")], "--json RUN/eval.json"),
        (["compare", str(tiny_run), "--labels", "a", "b"], "--labels"),
        (["compare", str(tiny_run), "--output", str(tmp_path / "c.jpg")], "c.jpg"),
    ]
    for argv, culprit in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and culprit in err[0] and "Traceback" not in err[0], (argv, err)
    assert not (tmp_path / "c.png").exists()
