"""A shop's own taxonomy through the jobs: declared with --taxonomy, labels of its classes
ingested and imported (the built-in six would reject them), rules kept inside it, the Label
Studio XML generated from it, and no annotator e-mail in any version of any table or in `show`."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
import yaml

from jobs import ingest, label
from ray_app.store import Store

pytestmark = pytest.mark.integration

INTENTS = ["translate", "oos", "product_search"] + [f"intent_{i:03d}" for i in range(110)]
EMAIL, OTHER = "alice@shop.example", "carol.jones@shop.example"


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_custom_taxonomy_end_to_end(ray_session, tmp_path, capsys):
    db = str(tmp_path / "db")
    tax = tmp_path / "taxonomy.yaml"
    tax.write_text(yaml.safe_dump({"name": "shop", "intents": INTENTS, "out_of_scope": "oos",
                                   "entity_types": ["language", "category"], "grades": {"0": 0, "1": 1, "2": 2, "3": 3},
                                   "annotators": {EMAIL: "Alice"}}))
    (tmp_path / "queries.csv").write_text("query_id,text\nQ1,translate hello to french\nQ2,tell me a joke\nQ3,laptops\n")
    (tmp_path / "products.csv").write_text("product_id,title,category\nP1,Fast laptop,Laptops\nP2,Slim laptop,Laptops\n")
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"target_id": "Q1", "task": "intent", "value": "translate", "annotator": OTHER},
        {"target_id": "Q2", "task": "intent", "value": "intent_107", "annotator": OTHER},
        {"target_id": "Q3", "task": "intent", "value": "brand_query"}]))  # built-in, not declared: quarantined
    for table in ("queries", "products"):
        assert ingest.main(["--db", db, "--table", table, "--path", str(tmp_path / f"{table}.csv"), "--quiet"]) == 0
    assert ingest.main(["--db", db, "--table", "labels", "--path", str(tmp_path / "labels.jsonl"),
                        "--taxonomy", str(tax), "--quiet"]) == 0
    summary = last_json(capsys)
    assert (summary["accepted"], summary["quarantined"]) == (2, 1)
    store = Store(db)
    reasons = store.read("quarantine").column("reason").to_pylist()
    assert any("unknown intent 'brand_query'" in r and "translate, oos, product_search" in r for r in reasons)

    ls = [{"data": {"query_id": "Q1", "text": "translate hello to french"}, "annotations": [
        {"completed_by": {"id": 1, "email": EMAIL}, "result": [
            {"type": "choices", "from_name": "intent", "to_name": "text", "value": {"choices": ["translate"]}},
            {"type": "labels", "from_name": "entities", "to_name": "text",
             "value": {"start": 19, "end": 25, "text": "french", "labels": ["language"]}}]},
        {"completed_by": {"id": 2, "email": OTHER}, "result": [
            {"type": "choices", "from_name": "intent", "to_name": "text", "value": {"choices": ["intent_042"]}}]}]}]
    (tmp_path / "ls.json").write_text(json.dumps(ls))
    assert label.main(["--db", db, "--action", "import", "--path", str(tmp_path / "ls.json"), "--quiet"]) == 0
    imported = last_json(capsys)
    assert (imported["imported"], imported["rejected"], imported["taxonomy"]["intents"]) == (2, 0, 113)

    assert label.main(["--db", db, "--action", "weak", "--quiet"]) == 0
    rule_intents = {r["value"] for r in store.read("labels").to_pylist() if r["source"] == "rule" and r["task"] == "intent"}
    assert rule_intents and rule_intents <= set(INTENTS) and "out_of_scope" not in rule_intents

    xml_path, export = tmp_path / "config.xml", tmp_path / "tasks.json"
    assert label.main(["--db", db, "--action", "label-studio-config", "--path", str(xml_path), "--quiet"]) == 0
    root = ET.fromstring(xml_path.read_text())
    controls = {el.get("name"): [c.get("value") for c in el] for el in root.iter() if el.tag in ("Choices", "Labels")}
    assert controls["intent"] == INTENTS and controls["entities"] == ["language", "category"]
    assert label.main(["--db", db, "--action", "export", "--path", str(export), "--quiet"]) == 0
    keys = {el.get("value").lstrip("$") for el in root.iter() if el.tag == "Text"}
    for task in json.loads(export.read_text()):
        assert keys <= set(task["data"])
        for item in (i for part in task["annotations"] + task["predictions"] for i in part["result"]):
            assert item["to_name"] == "text" and set(item["value"].get("choices") or item["value"]["labels"]) <= set(controls[item["from_name"]])
    assert label.main(["--db", db, "--action", "import", "--path", str(export), "--quiet"]) == 0
    assert last_json(capsys)["rejected"] == 0

    assert label.main(["--db", db, "--action", "show", "--query-id", "Q1"]) == 0
    shown = capsys.readouterr().out
    assert "Alice" in shown and EMAIL not in shown and OTHER not in shown and "@" not in shown
    for table in ("labels", "quarantine", "taxonomy"):
        for version in range(1, store.version(table) + 1):
            dump = json.dumps(store.read(table, version=version).to_pylist(), default=str)
            assert EMAIL not in dump and OTHER not in dump, (table, version)
