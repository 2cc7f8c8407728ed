"""Approximate kinds against exact search on real ReID features: ImageNet MobileNetV2 on CUHK01.

No trained checkpoint exists inside the test suite (training takes minutes), so the features are
those of the ImageNet-initialised MobileNetV2 on 400 CUHK01 crops (100 identities, 2 cameras).
``benchmarks/bench_index.py --cuhk01 DIR [--checkpoint CKPT]`` does the same on all 3884 images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
torch = pytest.importorskip("torch")

from index_testlib import MANIFEST  # noqa: E402

from reidkit.index import EntryMeta, GalleryIndex, IndexManifest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CAMPUS = SHARED / "data" / "CUHK01" / "campus"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_features.pth"
KINDS = {"ivf": dict(nlist=16, nprobe=8), "ivfpq": dict(nlist=16, nprobe=8, m=40), "hnsw": dict(M=16)}


@pytest.fixture(scope="module")
def cuhk01_features():
    from reidkit.data.base import read_image
    from reidkit.data.transforms import TransformConfig, build_transforms
    from reidkit.models import create_model

    paths = sorted(CAMPUS.glob("*.png"))[:400]
    transform = build_transforms(TransformConfig(height=128, width=64), train=False)
    model = create_model("mobilenet_v2", pretrained=str(WEIGHTS)).eval()
    with torch.inference_mode():
        batch = torch.stack([transform(read_image(str(p))) for p in paths])
        features = torch.cat([model(chunk) for chunk in batch.split(100)]).numpy()
    manifest = IndexManifest.for_model(model, "mobilenet_v2", (128, 64))
    return paths, features, manifest


def _recall(found: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(r)) / 10 for f, r in zip(found, reference)]))


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.skipif(not (CAMPUS.is_dir() and WEIGHTS.is_file()), reason="../shared CUHK01 or weights absent")
def test_recall_on_cuhk01_mobilenet_features(tmp_path, cuhk01_features):
    paths, features, manifest = cuhk01_features
    entries = [EntryMeta(path=str(p), pid=int(p.name[:4]), camid=int(p.name[4:7]) // 3) for p in paths]
    camids = np.array([e.camid for e in entries])
    exact = GalleryIndex.create(tmp_path / "flat", features.shape[1], manifest)
    exact.add(features, entries)
    reference = exact.search(features, topk=10).ids
    for kind, params in KINDS.items():
        index = GalleryIndex.create(tmp_path / kind, features.shape[1], manifest, kind=kind, **params)
        index.add(features, entries)
        assert _recall(index.search(features, topk=10).ids, reference) >= 0.95, kind
    # cross-camera search (each query's own camera filtered out): the graph copes; the IVF lists
    # of ImageNet features group by camera, so filtered IVF search would need a larger nprobe
    cross = exact.search(features, topk=10, query_camids=camids).ids
    assert _recall(index.search(features, topk=10, query_camids=camids).ids, cross) >= 0.95
    reopened = GalleryIndex.open(tmp_path / "hnsw", expect_model=manifest)
    assert reopened.manifest.model_sha256 != MANIFEST.model_sha256 and len(reopened) == 400
