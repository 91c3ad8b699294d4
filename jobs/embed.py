"""Embed the catalogue into the products table and build its ANN + BM25 indexes.

  python -m jobs.embed --db DIR [--model minilm|tiny-bert|<retriever version or alias>|<folder or HF id>]
                       [--batch-size 64] [--concurrency 1] [--cpus-per-actor 1] [--use-gpu]
                       [--index auto|none|ivf_pq|ivf_hnsw_sq] [--snapshot NAME]

Ray Data runs the encoder in an actor pool (`Embed`: the model is loaded once per actor, each
call embeds one batch; --concurrency actors, one GPU each with --use-gpu). Only rows whose text
(`ray_app.training.data.product_text`) or model changed since their vector was written are
embedded, so re-running after an ingest embeds just the new and changed products; a model of
another dimension re-embeds everything. Vectors are merged into `products` by product_id in one
commit (columns `vector`, `vector_model`, `vector_text_hash`). Then the vector index follows the
rule in `ray_app/index.py` (flat exact search below 10,000 rows, IVF_PQ with sqrt(n) partitions
and dim/8 sub-vectors above) and one BM25 index per text column (--fts-columns; title, brand).
Indexes are rebuilt only when something was embedded or they are missing.
The driver loads the model once too: it validates the name before Ray starts and learns the
vector dimension. Last stdout line: JSON summary (embedded, skipped, dim, model, index, seconds).
"""
from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ray_app.cli import JobError, main_wrapper
from ray_app.index import (HASH_COLUMN, MODEL_COLUMN, VECTOR_COLUMN, build_fts_indexes, build_vector_index,
                           ensure_vector_columns, existing_vector_index, fts_columns_indexed, index_plan,
                           load_text_encoder, plan_embedding, vector_array, write_vectors)
from ray_app.store import Store, StoreError
from ray_app.training.data import product_text
from schemas.evaluation import EmbedConfig, EmbedResult, VectorIndexInfo

TEXT_COLUMNS = ["product_id", "title", "brand", "category_path", "attributes", "description"]


class Embed:
    """Ray Data actor: loads the encoder once, then turns batches of product texts into vectors."""

    def __init__(self, model: str, models_dir: Optional[str] = None, max_length: Optional[int] = None,
                 batch_size: int = 64, use_gpu: bool = False, threads: Optional[int] = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.encoder = load_text_encoder(model, models_dir, max_length, "cuda" if use_gpu else None, batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.encoder.encode(batch.column("text").to_pylist())
        return pa.table({"product_id": batch.column("product_id"), VECTOR_COLUMN: vector_array(vectors),
                         MODEL_COLUMN: pa.array([self.encoder.key] * batch.num_rows, pa.string()),
                         HASH_COLUMN: batch.column("text_hash")})


def read_for_planning(tbl) -> list[dict[str, Any]]:
    """Text columns + vector bookkeeping of every product (the vectors themselves reduced to a flag)."""
    data = tbl.search().select(TEXT_COLUMNS + [MODEL_COLUMN, HASH_COLUMN, VECTOR_COLUMN]).limit(None).to_arrow()
    present = pc.is_valid(data.column(VECTOR_COLUMN))
    data = data.drop_columns([VECTOR_COLUMN]).append_column(VECTOR_COLUMN, present)
    return [{**r, VECTOR_COLUMN: r[VECTOR_COLUMN] or None} for r in data.to_pylist()]


def embed_with_ray(todo: list[dict[str, str]], config: EmbedConfig) -> pa.Table:
    """Run the `Embed` actor pool over `todo` rows (Ray already started); returns the vector columns."""
    import ray

    from ray_app.runtime import cluster_address

    resources = ray.cluster_resources()
    # a local Ray has what it has: say so up front. A cluster (--ray-address, or `ray job submit`'s
    # $RAY_ADDRESS) may autoscale from zero: the actors wait there until the autoscaler brings nodes.
    if not cluster_address(config.ray_address):
        if config.use_gpu and resources.get("GPU", 0) < 1:
            raise JobError("--use-gpu: the local Ray has no GPU")
        if not config.use_gpu and config.concurrency * config.cpus_per_actor > resources.get("CPU", 0):
            raise JobError(f"--concurrency {config.concurrency} x --cpus-per-actor {config.cpus_per_actor} needs more "
                           f"CPUs than the local Ray has ({resources.get('CPU', 0):g})")
    elif config.use_gpu and resources.get("GPU", 0) < 1 and not config.quiet:
        print("no GPU node is up yet: the embed actors wait for the autoscaler to start one", flush=True)
    todo = sorted(todo, key=lambda r: len(r["text"]))  # similar lengths per batch: less padding
    table = pa.Table.from_pylist(todo, schema=pa.schema([("product_id", pa.string()), ("text", pa.string()),
                                                         ("text_hash", pa.string())]))
    block = max(config.batch_size, -(-len(todo) // (config.concurrency * 4)))
    blocks = [table.slice(i, block) for i in range(0, table.num_rows, block)]
    ds = ray.data.from_arrow(blocks).map_batches(
        Embed, batch_size=config.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        fn_constructor_kwargs={"model": config.model, "models_dir": config.models_dir, "max_length": config.max_length,
                               "batch_size": config.batch_size, "use_gpu": config.use_gpu,
                               "threads": None if config.use_gpu else max(1, int(config.cpus_per_actor))},
        num_cpus=config.cpus_per_actor, num_gpus=1 if config.use_gpu else 0)
    parts = ray.get(ds.to_arrow_refs())
    return pa.concat_tables(parts) if parts else table.slice(0, 0)


def _same_type(existing, plan: dict[str, Any]) -> bool:
    norm = lambda s: s.replace("_", "").lower()  # noqa: E731 - IvfPq vs IVF_PQ
    return existing is not None and norm(existing.index_type) == norm(plan["type"])


def run(config: EmbedConfig) -> EmbedResult:
    started = time.perf_counter()
    store = Store(config.db)
    if not store.exists("products") or store.count("products") == 0:
        raise JobError(f"no products in {store.uri}; ingest a catalogue first (python -m jobs.ingest)")
    encoder = load_text_encoder(config.model, config.models_dir, config.max_length)
    tbl = store.table("products")
    reset = ensure_vector_columns(tbl, encoder.dim)
    rows = read_for_planning(tbl)
    todo, skipped = plan_embedding(rows, product_text, encoder.key, force=config.force)
    log = (lambda msg: None) if config.quiet else (lambda msg: print(msg, file=sys.stderr))
    log(f"embed: {len(rows):,} products, {len(todo):,} to embed with {encoder.key} (dim {encoder.dim}), {skipped:,} up to date"
        + (f" [{reset}]" if reset else ""))
    embed_seconds = 0.0
    if todo:
        from ray_app.runtime import init_ray

        if config.quiet:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        with warnings.catch_warnings():  # Ray fork+execs its processes; lancedb's fork warning does not apply
            warnings.filterwarnings("ignore", message="lancedb fork support")
            init_ray(config.ray_address, config.num_cpus, quiet=config.quiet)
        t0 = time.perf_counter()
        vectors = embed_with_ray(todo, config)
        embed_seconds = time.perf_counter() - t0
        if vectors.num_rows != len(todo):
            raise JobError(f"the encoder returned {vectors.num_rows} vectors for {len(todo)} texts")
        write_vectors(tbl, vectors)
        log(f"embed: {len(todo):,} vectors in {embed_seconds:.1f}s ({len(todo) / embed_seconds:.1f}/s)")
    changed = bool(todo) or bool(reset)
    n_vectors = tbl.count_rows(f"{VECTOR_COLUMN} IS NOT NULL")
    plan = index_plan(n_vectors, encoder.dim, config.index, config.ann_min_rows, config.num_partitions,
                      config.num_sub_vectors)
    existing = existing_vector_index(tbl)
    rebuild = changed or (plan["type"] == "none") != (existing is None) or (
        existing is not None and not _same_type(existing, plan))
    if rebuild:
        build_vector_index(tbl, plan)
        log(f"index: vector index {plan['type']} {plan['params']} ({plan['reason']})")
    fts_done: list[str] = []
    if config.fts:
        missing = set(config.fts_columns) - set(fts_columns_indexed(tbl))
        if changed or missing:
            try:
                fts_done = build_fts_indexes(tbl, config.fts_columns)
            except ValueError as exc:
                raise JobError(str(exc)) from exc
            log(f"index: BM25 on {', '.join(fts_done)}")
        else:
            fts_done = list(config.fts_columns)
    if config.snapshot:
        try:
            store.create_snapshot(config.snapshot, note=f"jobs.embed {encoder.key}")
        except StoreError as exc:
            raise JobError(str(exc)) from exc
    return EmbedResult(model=encoder.key, dim=encoder.dim, total=len(rows), embedded=len(todo), skipped=skipped,
                       reset_reason=reset, vector_index=VectorIndexInfo(type=plan["type"], params=plan["params"],
                                                                        rebuilt=rebuild, reason=plan["reason"]),
                       fts_columns=fts_done, embed_seconds=round(embed_seconds, 2),
                       vectors_per_s=round(len(todo) / embed_seconds, 1) if embed_seconds else 0.0,
                       seconds=round(time.perf_counter() - started, 2), table_version=tbl.version,
                       snapshot=config.snapshot)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, EmbedConfig, "jobs.embed", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
