"""``reidkit serve``: a search service and web page over a gallery index (the ``serve`` extra).

```python
from reidkit.serve import SearchService, create_app

service = SearchService(index, embedder, card=model_card(index.manifest, cfg, index.manifest.model_source))
app = create_app(service, api_key="secret")    # a FastAPI app: uvicorn.run(app) or TestClient(app)
```

:mod:`reidkit.serve.service` holds the logic (decoding uploads safely, searching, browsing,
thumbnails, adding in one commit) and raises :class:`ServiceError` with the HTTP status of each
refusal; :mod:`reidkit.serve.app` maps it onto HTTP endpoints and serves the page in
``static/`` (plain HTML, CSS and JavaScript, nothing from a CDN). The command line builds both
from an index folder: :func:`reidkit.cli.serve.open_service`.
"""

from reidkit.serve.app import create_app
from reidkit.serve.service import SCORE_COSINE, SCORE_RERANKED, SearchService, ServiceError, ServiceLimits, model_card

__all__ = ["SCORE_COSINE", "SCORE_RERANKED", "SearchService", "ServiceError", "ServiceLimits", "create_app", "model_card"]
