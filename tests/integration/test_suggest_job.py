"""The suggestion job end to end on a tiny generated shop: ingest, build, one-commit rewrite, and
`SuggestIndex.from_store` completing a logged query from its prefix, personalised by pseudonym."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow.compute as pc
import pytest

from jobs import generate, ingest, suggest
from ray_app.search.suggest import AFFINITY_TABLE, SUGGESTIONS_TABLE, SuggestIndex, normalize_suggestion
from ray_app.search.suggest_build import CATALOGUE_USER
from ray_app.store import Store, StoreError
from schemas.config import GenerateConfig, IngestConfig, SuggestConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shop(ray_session, tmp_path_factory):
    """A generated 200-product shop ingested into a fresh store: (store, demo folder)."""
    root = tmp_path_factory.mktemp("suggest")
    demo, db = root / "demo", str(root / "db")
    generate.run(GenerateConfig(workspace=str(root), out=str(demo), products=200, queries=60, users=20,
                                events=3000, quiet=True))
    for table, file in (("products", "products.jsonl"), ("queries", "queries.csv"), ("events", "events.parquet")):
        ingest.run(IngestConfig(workspace=str(root), db=db, table=table, path=str(demo / file), quiet=True))
    return Store(db), demo


def test_missing_tables_name_the_job(tmp_path):
    with pytest.raises(StoreError, match="python -m jobs.suggest"):
        SuggestIndex.from_store(Store(str(tmp_path / "empty")))


def test_job_builds_tables_the_index_answers_from(shop, capsys):
    store, demo = shop
    assert suggest.main(["--db", store.uri, "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = store.db.open_table(SUGGESTIONS_TABLE).to_arrow()
    assert summary["suggestions"] == table.num_rows == sum(summary["by_kind"].values())
    assert set(summary["by_kind"]) == {"query", "brand", "category", "product_line"}
    assert set(table.column("build_id").to_pylist()) == {summary["build_id"]}

    index = SuggestIndex.from_store(store)
    assert index.build_id == summary["build_id"] and len(index) == table.num_rows
    logged = table.filter(pc.equal(table["kind"], "query"))
    assert logged.num_rows > 0
    top = logged.column("text")[0].as_py()  # the most popular logged query
    assert top in [r["text"] for r in index.complete(top[:-1], k=10)]

    # only queries two or more users searched are offered; raw ids never reach the affinity table
    events = pd.read_parquet(demo / "events.parquet")
    texts = pd.read_csv(demo / "queries.csv").set_index("query_id")["text"].map(normalize_suggestion)
    users = events[events.query_id != ""].groupby("query_id").user_id.nunique()
    by_text = users.groupby(texts.reindex(users.index).values).sum()  # an upper bound when texts repeat
    solo = {t for t, n in by_text.items() if n < 2}
    assert solo and not solo & set(logged.column("text").to_pylist())
    affinity = store.db.open_table(AFFINITY_TABLE).to_arrow()
    pseudonyms = set(store.read("events", columns=["user_id"]).column("user_id").to_pylist())
    people = set(affinity.column("user_id").to_pylist()) - {CATALOGUE_USER}  # its rows: each leaf's median price
    assert summary["users_with_affinity"] == len(people) > 0
    assert people <= pseudonyms and CATALOGUE_USER in set(affinity.column("user_id").to_pylist())
    assert not set(affinity.column("user_id").to_pylist()) & set(events.user_id)

    # a user's own brands lift completions about them, flagged; the same prefix without a user is not
    user = affinity.column("user_id")[0].as_py()
    brand = next(r["value"] for r in affinity.to_pylist() if r["user_id"] == user and r["kind"] == "brand")
    mine = index.complete(brand[:2], user_id=user, k=20)
    assert any(r["personalised"] for r in mine)
    assert not any(r["personalised"] for r in index.complete(brand[:2], k=20))


def test_rerun_replaces_tables_in_one_commit(shop):
    store, _ = shop
    first = suggest.run(SuggestConfig(db=store.uri, quiet=True))
    second = suggest.run(SuggestConfig(db=store.uri, quiet=True))
    assert second.versions == {t: v + 1 for t, v in first.versions.items()}
    assert second.suggestions == first.suggestions == store.db.open_table(SUGGESTIONS_TABLE).count_rows()
    assert second.by_kind == first.by_kind
