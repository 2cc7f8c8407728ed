"""Persistent gallery index: faiss search over embeddings, SQLite metadata, crash-safe folder.

```python
from reidkit.index import GalleryIndex, IndexManifest, EntryMeta

manifest = IndexManifest.for_model(model, "osnet_x1_0", input_size=(256, 128))
index = GalleryIndex.create("gallery.idx", dim=512, manifest=manifest, kind="hnsw")
ids = index.add(features, [EntryMeta(path=p, camid=c) for p, c in zip(paths, camids)])
result = index.search(queries, topk=100, query_camids=q_camids)  # cosine, larger is closer
top10 = rerank_result(index, queries, result, topk=10)            # k-reciprocal on the candidates
index = GalleryIndex.open("gallery.idx", expect_model=manifest, ef_search=256)
report = index.verify()                                           # every file, once; raises on damage
```

Scores are inner products of L2-normalised embeddings (cosine similarity, larger is closer). The
folder layout and the commit protocol are described in :mod:`reidkit.index.gallery`; the index
kinds and their parameters in :mod:`reidkit.index.backends`. Needs ``faiss`` (the ``index`` extra).
"""

from reidkit.index.backends import BUILD_PARAMS, SEARCH_PARAMS
from reidkit.index.errors import GalleryIndexError, IndexLockedError, ModelMismatchError
from reidkit.index.gallery import GalleryIndex
from reidkit.index.manifest import KINDS, IndexInfo, IndexManifest, IndexState, model_fingerprint
from reidkit.index.metadata import Entry, EntryMeta, EntryPage
from reidkit.index.postprocess import expand_queries, rerank_result
from reidkit.index.search import SearchResult
from reidkit.index.verify import VerifyReport

__all__ = [
    "BUILD_PARAMS",
    "KINDS",
    "SEARCH_PARAMS",
    "Entry",
    "EntryMeta",
    "EntryPage",
    "GalleryIndex",
    "GalleryIndexError",
    "IndexInfo",
    "IndexLockedError",
    "IndexManifest",
    "IndexState",
    "ModelMismatchError",
    "SearchResult",
    "VerifyReport",
    "expand_queries",
    "model_fingerprint",
    "rerank_result",
]
