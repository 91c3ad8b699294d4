"""A tiny shop for the Serve tests: 200 products with prices, stock and brands, queries, events and
judgments in a LanceDB store; tiny-bert vectors and BM25 indexes from jobs.embed; a randomly
initialised tiny intent model, two tiny rankers (production and candidate) and a tiny recommender in
the registry; suggestions from jobs.suggest; an API keys file for POST /v1/events."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

BRANDS = ["nike", "adidas", "sony", "bosch", "lego"]
CATEGORIES = ["running shoe", "headphones", "cordless drill", "toy car", "rain jacket", "coffee mug", "desk lamp", "yoga mat"]
QUERY_TEXTS = ["nike running shoe", "bosch cordless drill", "sony headphones", "lego toy car", "rain jacket",
               "coffee mug", "adidas yoga mat", "desk lamp"]


def products(n: int = 200) -> list[dict[str, Any]]:
    from ray_app.store import utcnow

    return [{"product_id": f"p{i:03d}", "title": f"{BRANDS[i % 5]} {CATEGORIES[i % 8]} model {i}", "brand": BRANDS[i % 5],
             "category_path": ["shop", CATEGORIES[i % 8]], "description": f"a {CATEGORIES[i % 8]} for every day",
             "price": float(10 + (i * 7) % 190), "stock": 0 if i % 11 == 0 else 5 + i % 3,
             "locale": "us" if i % 4 else "de", "updated_at": utcnow()} for i in range(n)]


def fill(store, n: int = 200) -> None:
    """Products, queries (train split), judgments and click/purchase events."""
    from ray_app.store import rows_to_arrow, utcnow

    prods = products(n)
    queries = [{"query_id": f"q{i}", "text": t, "split": "train" if i % 2 else "test", "dataset": "toy",
                "updated_at": utcnow()} for i, t in enumerate(QUERY_TEXTS)]
    judgments, events = [], []
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    for qi, q in enumerate(queries):
        words = q["text"].split()
        for p in prods:
            if all(w in p["title"] for w in words[-2:]):
                judgments.append({"query_id": q["query_id"], "product_id": p["product_id"], "grade": "E", "gain": 3.0,
                                  "split": q["split"], "updated_at": utcnow()})
        for k in range(1 + (len(QUERY_TEXTS) - qi) * 3):  # earlier queries are more popular
            pid = prods[(qi * 13 + k) % n]["product_id"]
            events.append({"event_id": f"e{qi}-{k}", "event_type": "click" if k % 3 else "purchase",
                           "user_id": f"user-{k % 7}", "session_id": f"s-{qi}-{k}", "query_id": q["query_id"],
                           "product_id": pid, "position": 1 + k % 10, "timestamp": start + timedelta(minutes=qi * 60 + k)})
    store.upsert("products", rows_to_arrow(prods, "products"))
    store.upsert("queries", rows_to_arrow(queries, "queries"))
    store.upsert("judgments", rows_to_arrow(judgments, "judgments"))
    from ray_app.privacy import pseudonymise, pseudonymise_session, resolve_key

    key, _ = resolve_key()
    for e in events:  # the store holds pseudonyms only, as jobs.ingest writes them
        e["user_id"], e["session_id"] = pseudonymise(e["user_id"], key), pseudonymise_session(e["session_id"], key)
    store.upsert("events", rows_to_arrow(events, "events"), insert_only=True)


def register_tiny(models_dir: str | Path, task: str, head_config: dict[str, Any], seed: int, alias: str) -> str:
    """A randomly initialised tiny-bert model of `task` in the registry under `alias`; its version name."""
    import torch

    from ray_app.models.lora import build_model, save_model
    from ray_app.registry import Registry

    torch.manual_seed(seed)
    model, _ = build_model(task, "tiny-bert", head_config)
    registry = Registry(models_dir)
    version = registry.add(task, lambda folder: save_model(model, folder, task, "tiny-bert", None, {"max_length": 64}),
                           base_model="tiny-bert", lora=False, config={"seed": seed})
    registry.promote(version.name, alias)
    return version.name


INTENT_HEAD = {"intents": ["product_search", "brand_search", "out_of_scope"],
               "entity_types": ["brand", "category", "price_range"]}
RANKER_HEAD = {"pooling": "residual", "loss": "listwise"}
RECOMMENDER_HEAD = {"locales": ["us", "de"], "max_history": 10}
API_KEY = "test-key-" + "7f3a"  # made up for the tests; real keys come from the environment or a secrets file


def build(root: Path, db: Optional[str] = None, models_dir: Optional[str] = None) -> dict[str, Any]:
    """The whole tiny shop under `root` (its LanceDB at `db` and its registry at `models_dir` when
    given: s3:// URIs, say); the paths and version names the tests need."""
    from jobs import embed
    from ray_app.store import Store
    from schemas.evaluation import EmbedConfig

    db, models = db or str(root / "lancedb"), models_dir or str(root / "models")
    store = Store(str(db))
    fill(store)
    embed.run(EmbedConfig(db=str(db), workspace=str(root), model="tiny-bert", batch_size=64, quiet=True))
    versions = {"intent": register_tiny(models, "intent_entity", INTENT_HEAD, 1, "production"),
                "ranker": register_tiny(models, "ranker", RANKER_HEAD, 2, "production"),
                "ranker_candidate": register_tiny(models, "ranker", RANKER_HEAD, 3, "candidate"),
                "recommender": register_tiny(models, "recommender", RECOMMENDER_HEAD, 4, "production")}
    from jobs import suggest
    from schemas.config import SuggestConfig

    suggest.run(SuggestConfig(db=str(db), workspace=str(root), quiet=True))
    keys = root / "api-keys.txt"  # a secrets file of the test's own, as a deployment would mount one
    keys.write_text("# feedback writers\n" + API_KEY + "\n")
    return {"root": root, "db": str(db), "models_dir": str(models), "versions": versions, "rules": write_rules(root),
            "api_keys_file": str(keys), "api_key": API_KEY}


TINY_RULES = """\
version: "tiny-1"
rules:
  - id: hide-out-of-stock
    kind: exclude
    out_of_stock: true
  - id: pin-mug
    kind: pin
    query: [coffee mug]
    product_id: p013
    position: 2
  - id: sony-mobile
    kind: boost
    field: brand
    value: sony
    factor: 3.0
    when:
      device: [mobile]
  - id: two-per-brand
    kind: diversity
    max_per_brand: 2
    first_n: 6
"""


def write_rules(root: Path) -> str:
    path = root / "rules.yaml"
    path.write_text(TINY_RULES)
    return str(path)
