"""The search library: first-stage candidates (BM25, dense vectors), fusion, and re-ranking.

One implementation for both callers: `jobs.evaluate` scores these systems offline, and the Serve
deployments (Part 4) will answer queries with the same classes, so the figures evaluated are the
figures of what is served. Systems share one interface: `prepare(queries)` (batch work such as
encoding the queries), `judged(query, product_ids)` -> scores (None = cannot score) and
`retrieve(query, depth)` -> ranked product ids over the whole catalogue.
"""
from ray_app.search.candidates import BM25, Dense, product_matrix
from ray_app.search.fusion import Hybrid, RerankFusion, fuse
from ray_app.search.rerank import Rerank

__all__ = ["BM25", "Dense", "Hybrid", "Rerank", "RerankFusion", "fuse", "product_matrix"]
