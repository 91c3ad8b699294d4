"""A shop's own label taxonomy (120 intents, its entity types, a numeric grade scale): declared
from YAML, saved into the store and pinned by snapshots, checked by import, ingest cleaning,
rules and training alike, rendered as the Label Studio XML its exported tasks open in; annotator
e-mails never stored."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest
import yaml

from ray_app.ingest.clean import CleanContext, Reject, clean_record
from ray_app.labeling.human_io import ImportContext, import_records, label_studio_tasks
from ray_app.labeling.rules import in_taxonomy
from ray_app.labeling.studio_config import label_studio_config
from ray_app.store import rows_to_arrow
from ray_app.taxonomy import declare_taxonomy, declared_taxonomy, load_taxonomy_file, snapshot_taxonomy, store_taxonomy
from schemas.taxonomy import TaxonomyError, builtin_taxonomy

T0 = datetime(2026, 1, 1)
KEY = "test-key-not-secret"
INTENTS = ["translate", "oos"] + [f"intent_{i:03d}" for i in range(118)]
EMAIL, OTHER = "alice@shop.example", "bob.smith@shop.example"


@pytest.fixture
def taxonomy_file(tmp_path):
    path = tmp_path / "taxonomy.yaml"
    path.write_text(yaml.safe_dump({"name": "shop", "intents": INTENTS, "out_of_scope": "oos",
                                    "entity_types": ["language", "device", "colour"],
                                    "grades": {"0": 0, "1": 1, "2": 2, "3": 3}, "annotators": {EMAIL: "Alice"}}))
    return path


@pytest.fixture
def ctx(taxonomy_file) -> ImportContext:
    return ImportContext(texts={"Q1": "translate hello to french", "Q2": "red phone"}, products={"P1"}, stored={},
                         default_annotator="team", now=T0, taxonomy=load_taxonomy_file(str(taxonomy_file)),
                         pseudonym_key=KEY)


def test_taxonomy_file_declares_and_rejects_inconsistent_ones(taxonomy_file, tmp_path):
    tax = load_taxonomy_file(str(taxonomy_file))
    assert len(tax.intents) == 120 and tax.out_of_scope == "oos" and tax.grades["3"] == 3.0
    assert tax.check_intent("Translate") == "translate" and tax.check_grade("2.0") == "2"
    with pytest.raises(TaxonomyError, match=r"unknown intent 'shopping'; known \(120\): translate, oos, intent_000"):
        tax.check_intent("shopping")
    for bad, field in (({"intents": ["a", "a"]}, "duplicate"), ({"intents": ["a"], "out_of_scope": "b"}, "out_of_scope"),
                       ({"intents": ["a"], "colours": []}, "colours")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(TaxonomyError, match=field):
            load_taxonomy_file(str(path))
    with pytest.raises(TaxonomyError, match="does not exist"):
        load_taxonomy_file(str(tmp_path / "missing.yaml"))


def test_import_validates_against_the_declared_taxonomy(ctx, tmp_path):
    lines = [dict(target_id="Q1", task="intent", value="translate", annotator=EMAIL),
             dict(target_id="Q1", task="intent", value="product_search", annotator=OTHER),  # built-in, not declared
             dict(target_id="Q1", task="entity", spans=[{"start": 19, "end": 25, "type": "language"}], annotator=EMAIL),
             dict(target_id="Q2", task="entity", spans=[{"start": 0, "end": 3, "type": "brand"}]),
             dict(target_type="query_product", target_id="Q2::P1", task="relevance", value="3.0", annotator=OTHER),
             dict(target_type="query_product", target_id="Q2::P1", task="relevance", value="E")]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = import_records(str(path), ctx)
    reasons = {r["line"]: r["reason"] for r in out.rejected}
    assert set(reasons) == {2, 4, 6}
    assert "unknown intent 'product_search'" in reasons[2] and "translate, oos" in reasons[2]
    assert "unknown entity type 'brand'; known (3): language, device, colour" in reasons[4]
    assert "unknown relevance grade 'E'; known: 0, 1, 2, 3" in reasons[6]
    assert sorted((r["task"], r["value"]) for r in out.rows) == [("entity", ""), ("intent", "translate"), ("relevance", "3")]
    # the built-in taxonomy still rejects a shop's class, as before
    builtin = ImportContext(texts=ctx.texts, products={"P1"}, stored={}, now=T0, pseudonym_key=KEY)
    assert "unknown intent 'translate'" in import_records(str(path), builtin).rejected[0]["reason"]


def test_label_studio_import_never_stores_annotator_emails(ctx, tmp_path):
    task = {"data": {"query_id": "Q1", "text": "translate hello to french"}, "annotations": [
        {"completed_by": {"id": 3, "email": EMAIL}, "result": [
            {"type": "choices", "from_name": "intent", "to_name": "text", "value": {"choices": ["translate"]}}]},
        {"completed_by": {"id": 4, "email": OTHER}, "result": [
            {"type": "choices", "from_name": "intent", "to_name": "text", "value": {"choices": ["oos"]}}]}]}
    path = tmp_path / "ls.json"
    path.write_text(json.dumps([task]))
    out = import_records(str(path), ctx)
    names = sorted(r["annotator"] for r in out.rows)
    assert out.rejected == [] and "Alice" in names  # the configured display name
    assert all("@" not in json.dumps(r, default=str) and "bob" not in json.dumps(r, default=str) for r in out.rows)
    # the unconfigured one is a stable keyed pseudonym: the same person gets the same name next time
    assert names == sorted(r["annotator"] for r in import_records(str(path), ctx).rows)


def test_label_studio_xml_lists_every_class_and_matches_exported_tasks(ctx):
    xml = label_studio_config(ctx.taxonomy)
    root = ET.fromstring(xml)
    controls = {el.get("name"): el for el in root.iter() if el.tag in ("Choices", "Labels")}
    objects = {el.get("name"): el.get("value") for el in root.iter() if el.tag == "Text"}
    assert [c.get("value") for c in controls["intent"]] == INTENTS
    assert [c.get("value") for c in controls["entities"]] == ["language", "device", "colour"]
    assert [c.get("value") for c in controls["relevance"]] == ["0", "1", "2", "3"]
    labels = [dict(label_id="a", target_type="query", target_id="Q1", task="intent", value="translate", spans=[],
                   source="human", confidence=1.0, annotator="Alice", created_at=T0),
              dict(label_id="b", target_type="query", target_id="Q1", task="entity", value="", source="human",
                   spans=[{"start": 19, "end": 25, "type": "language", "text": "french"}], confidence=1.0,
                   annotator="Alice", created_at=T0),
              dict(label_id="c", target_type="query_product", target_id="Q2::P1", task="relevance", value="2", spans=[],
                   source="human", confidence=1.0, annotator="Alice", created_at=T0)]
    tasks = label_studio_tasks(labels, [], ctx.texts, {"P1": "Phone"})
    assert len(tasks) == 3
    for task in tasks:
        assert {v.lstrip("$") for v in objects.values()} <= set(task["data"])  # Label Studio needs every $key
        for item in (i for a in task["annotations"] for i in a["result"]):
            assert item["from_name"] in controls and item["to_name"] in objects
            values = item["value"].get("choices") or item["value"].get("labels")
            assert set(values) <= {c.get("value") for c in controls[item["from_name"]]}


def test_ingest_cleaning_checks_labels_against_the_taxonomy(ctx):
    clean = CleanContext(table="labels", pseudonym_key=KEY, taxonomy=ctx.taxonomy)
    row = clean_record({"target_id": "Q1", "task": "intent", "value": "translate", "annotator": OTHER}, clean)
    assert row["value"] == "translate" and "@" not in row["annotator"] and row["annotator"]
    with pytest.raises(Reject, match="unknown intent 'weather'") as exc:
        clean_record({"target_id": "Q1", "task": "intent", "value": "weather"}, clean)
    assert exc.value.field == "value"
    with pytest.raises(Reject, match="unknown entity type 'brand'"):
        clean_record({"target_id": "Q1", "task": "entity", "spans": json.dumps([{"start": 0, "end": 3, "type": "brand"}])}, clean)
    builtin = CleanContext(table="labels", pseudonym_key=KEY, taxonomy=builtin_taxonomy())
    with pytest.raises(Reject, match="unknown intent 'translate'"):
        clean_record({"target_id": "Q1", "task": "intent", "value": "translate"}, builtin)


def test_rules_write_only_declared_values(ctx):
    spans = [{"start": 0, "end": 3, "type": "colour"}, {"start": 4, "end": 9, "type": "brand"}]
    assert in_taxonomy("out_of_scope", spans, ctx.taxonomy) == ("oos", spans[:1])
    assert in_taxonomy("product_search", spans, ctx.taxonomy) == (None, spans[:1])
    assert in_taxonomy("product_search", spans, None) == ("product_search", spans)


def test_store_keeps_the_declaration_pinned_by_snapshots_without_emails(ctx, taxonomy_file, store):
    assert declared_taxonomy(store) is None and store_taxonomy(store).name == "ecommerce"
    declare_taxonomy(store, load_taxonomy_file(str(taxonomy_file)), KEY, source="taxonomy.yaml")
    version = store.version("taxonomy")
    declare_taxonomy(store, load_taxonomy_file(str(taxonomy_file)), KEY)  # unchanged: no new version
    assert store.version("taxonomy") == version and store_taxonomy(store).intents == INTENTS
    assert store_taxonomy(store).annotators and EMAIL not in json.dumps(store.read("taxonomy").to_pylist(), default=str)
    store.create_snapshot("s1")
    smaller = load_taxonomy_file(str(taxonomy_file)).model_copy(update={"intents": ["translate", "oos"]})
    declare_taxonomy(store, smaller, KEY)
    assert snapshot_taxonomy(store, "s1").intents == INTENTS and store_taxonomy(store).intents == ["translate", "oos"]


def test_training_label_space_is_the_declared_taxonomy(ctx, taxonomy_file, store):
    from ray_app.cli import JobError
    from ray_app.training.data import load_task_data

    queries = [dict(query_id=f"q{i:02d}", text=f"translate word {i}", split="train", updated_at=T0) for i in range(12)]
    labels = [dict(label_id=f"l{i}", target_type="query", target_id=q["query_id"], task="intent",
                   value=INTENTS[i % 3], source="human", created_at=T0) for i, q in enumerate(queries)]
    store.upsert("queries", rows_to_arrow(queries, "queries"))
    store.upsert("labels", rows_to_arrow(labels, "labels"))
    declare_taxonomy(store, load_taxonomy_file(str(taxonomy_file)), KEY)
    store.create_snapshot("declared")
    data = load_task_data(store, "declared", "intent_entity")
    assert data.label_spaces == {"intents": INTENTS, "entity_types": ["language", "device", "colour"]}
    store.upsert("queries", rows_to_arrow([dict(queries[0], query_id="q99")], "queries"))
    store.upsert("labels", rows_to_arrow([dict(labels[0], label_id="x", target_id="q99", value="weather")], "labels"))
    store.create_snapshot("undeclared")
    with pytest.raises(JobError, match=r"does not declare: intents \{'weather': 1\}"):
        load_task_data(store, "undeclared", "intent_entity")
