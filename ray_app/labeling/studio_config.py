"""The Label Studio labelling configuration, generated from the store's taxonomy.

A team pastes this XML into its Label Studio project (Settings > Labeling Interface > Code);
the tasks `jobs.label --action export --path tasks.json` writes then open as they are: the
control names here are the `from_name`/`to_name` of every exported prediction and annotation,
and every data key the XML reads (`$text`, `$product_title`) is present in every exported task.
One project holds both kinds of task: query tasks (intent + entity spans) and query-product
tasks (relevance, shown with the product title).
"""
from __future__ import annotations

from xml.sax.saxutils import quoteattr

from schemas.taxonomy import Taxonomy

TEXT = "text"  # the object tag every control labels (to_name)
PRODUCT = "product_title"
INTENT = "intent"  # from_name of the intent choices
ENTITIES = "entities"  # from_name of the entity span labels
RELEVANCE = "relevance"  # from_name of the relevance choices
DATA_KEYS = ("query_id", TEXT, PRODUCT)  # keys every exported task's data holds


def label_studio_config(taxonomy: Taxonomy) -> str:
    """The labelling-interface XML with every declared intent, entity type and grade."""
    def choices(values: list[str]) -> str:
        return "\n".join(f"      <Choice value={quoteattr(v)}/>" for v in values)

    # Label Studio rejects a <Labels> without any <Label>: a taxonomy without entity types has none
    labels = "\n".join(f"    <Label value={quoteattr(t)}/>" for t in taxonomy.entity_types)
    grades = [f"{g} (gain {gain:g})" for g, gain in taxonomy.grades.items()]
    return "\n".join([
        f"<!-- generated from taxonomy {taxonomy.name.replace('--', '-')!r}: {len(taxonomy.intents)} intents, "
        f"{len(taxonomy.entity_types)} entity types, grades {', '.join(grades)} -->",
        "<View>",
        "  <Header value=\"Query\"/>",
        f"  <Text name=\"{TEXT}\" value=\"${TEXT}\"/>",
        *([f"  <Labels name=\"{ENTITIES}\" toName=\"{TEXT}\">", labels, "  </Labels>"] if labels else []),
        "  <View>",
        "    <Header value=\"Intent (query tasks)\"/>",
        f"    <Choices name=\"{INTENT}\" toName=\"{TEXT}\" choice=\"single\" showInline=\"false\">",
        choices(taxonomy.intents),
        "    </Choices>",
        "  </View>",
        "  <View>",
        "    <Header value=\"Product (query-product tasks): how relevant is it to the query?\"/>",
        f"    <Text name=\"product\" value=\"${PRODUCT}\"/>",
        f"    <Choices name=\"{RELEVANCE}\" toName=\"{TEXT}\" choice=\"single\" showInline=\"true\">",
        choices(list(taxonomy.grades)),
        "    </Choices>",
        "  </View>",
        "</View>",
        "",
    ])
