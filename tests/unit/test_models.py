"""Model layer without Ray: BIO alignment, encoder + embeddings, heads, LoRA save/reload/merge,
saved-model format, the registry, snapshot -> examples, and jobs.train's error paths."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ray_app.models.encoder import ModelLoadError, encode_texts, load_encoder, tiny_bert
from ray_app.models.heads import BiEncoder, CrossEncoderRanker, JointIntentEntityModel, listwise_loss, ranker_inputs
from ray_app.models.lora import apply_lora, load_saved_model, merge_lora, save_model
from ray_app.models.tokenize import IGNORE_INDEX, align_bio, bio_tags, bio_viterbi, constrained_tag_ids, decode_bio
from schemas.training import LoraSettings

pytestmark = [pytest.mark.unit, pytest.mark.model]

TYPES = ["brand", "category", "colour", "size"]
TAGS = bio_tags(TYPES)
TAG_INDEX = {t: i for i, t in enumerate(TAGS)}


@pytest.fixture(scope="module")
def tiny():
    return tiny_bert()


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny[1]


def _align(tok, text, spans):
    enc = tok(text, return_offsets_mapping=True)
    labels = align_bio(enc["offset_mapping"], enc.word_ids(), spans, TAG_INDEX)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    return enc, labels, tokens


def _tagged(tokens, labels):
    return [(t, TAGS[l] if l != IGNORE_INDEX else None) for t, l in zip(tokens, labels)]


def _roundtrip(tok, text, spans):
    enc, labels, _ = _align(tok, text, spans)
    ids = [max(l, 0) for l in labels]  # decode reads only first sub-tokens, which are labelled
    got = decode_bio(text, enc["offset_mapping"], enc.word_ids(), ids, TAGS)
    return [(s["start"], s["end"], s["type"], s["text"]) for s in got]


# -- constrained BIO decoding -----------------------------------------------------------------
def _logp(rows, tags):
    """Log-probabilities from {tag: prob} per word (unlisted tags share what is left)."""
    out = []
    for row in rows:
        rest = (1.0 - sum(row.values())) / (len(tags) - len(row))
        out.append([np.log(row.get(t, rest)) for t in tags])
    return np.array(out)


def test_viterbi_keeps_a_valid_argmax_sequence():
    tags = bio_tags(["brand", "color"])
    rows = [{"B-brand": 0.9}, {"I-brand": 0.8}, {"O": 0.9}, {"B-color": 0.7}]
    assert [tags[i] for i in bio_viterbi(_logp(rows, tags), tags)] == ["B-brand", "I-brand", "O", "B-color"]


def test_viterbi_repairs_what_argmax_gets_wrong():
    tags = bio_tags(["brand", "color"])
    # argmax: O I-brand -> the I needs a B: best valid path is B-brand I-brand (0.4 x 0.9 > O O: 0.55 x 0.025)
    rows = [{"O": 0.55, "B-brand": 0.4}, {"I-brand": 0.9}]
    assert [tags[i] for i in bio_viterbi(_logp(rows, tags), tags)] == ["B-brand", "I-brand"]
    # argmax: I-brand first -> never valid at the start
    rows = [{"I-brand": 0.6, "B-brand": 0.3}]
    assert [tags[i] for i in bio_viterbi(_logp(rows, tags), tags)] == ["B-brand"]
    # argmax: B-brand I-color -> type switch inside a span is not allowed
    rows = [{"B-brand": 0.9}, {"I-color": 0.5, "I-brand": 0.4}]
    assert [tags[i] for i in bio_viterbi(_logp(rows, tags), tags)] == ["B-brand", "I-brand"]
    assert bio_viterbi(np.zeros((0, len(tags))), tags) == []


def test_constrained_tag_ids_decode_on_first_subtokens(tok):
    text = "sennheiser headphones red"
    enc = tok(text, return_offsets_mapping=True)
    tags = bio_tags(["brand", "color"])
    logits = np.full((len(enc["input_ids"]), len(tags)), -5.0)
    words = enc.word_ids()
    first = {w: i for i, w in reversed(list(enumerate(words))) if w is not None}
    logits[first[0], tags.index("I-brand")] = 3.0  # argmax says I-brand on the first word
    logits[first[0], tags.index("B-brand")] = 2.5
    logits[first[1], tags.index("O")] = 3.0
    logits[first[2], tags.index("B-color")] = 3.0
    ids = constrained_tag_ids(logits, words, tags)
    spans = decode_bio(text, enc["offset_mapping"], words, ids, tags)
    assert [(s["text"], s["type"]) for s in spans] == [("sennheiser", "brand"), ("red", "color")]
    assert all(ids[i] == 0 for i, w in enumerate(words) if i not in first.values())


# -- BIO alignment ----------------------------------------------------------------------------
def test_bio_multi_token_word_labels_only_first_subtoken(tok):
    text = "sennheiser headphones"
    _, labels, tokens = _align(tok, text, [{"start": 0, "end": 10, "type": "brand"}])
    assert _tagged(tokens, labels) == [("[CLS]", None), ("sen", "B-brand"), ("##nh", None), ("##eis", None),
                                       ("##er", None), ("head", "O"), ("##phones", None), ("[SEP]", None)]
    assert _roundtrip(tok, text, [{"start": 0, "end": 10, "type": "brand"}]) == [(0, 10, "brand", "sennheiser")]


def test_bio_punctuation_and_hyphenated_span(tok):
    text = "t-shirt, size 10."
    spans = [{"start": 0, "end": 7, "type": "category"}, {"start": 14, "end": 16, "type": "size"}]
    _, labels, tokens = _align(tok, text, spans)
    assert _tagged(tokens, labels) == [("[CLS]", None), ("t", "B-category"), ("-", "I-category"),
                                       ("shirt", "I-category"), (",", "O"), ("size", "O"), ("10", "B-size"),
                                       (".", "O"), ("[SEP]", None)]
    assert _roundtrip(tok, text, spans) == [(0, 7, "category", "t-shirt"), (14, 16, "size", "10")]


def test_bio_adjacent_spans_of_same_type_stay_separate(tok):
    text = "nike adidas shoes"
    spans = [(0, 4, "brand"), (5, 11, "brand")]
    _, labels, tokens = _align(tok, text, spans)
    assert _tagged(tokens, labels)[1:4] == [("nike", "B-brand"), ("adi", "B-brand"), ("##das", None)]
    assert _roundtrip(tok, text, spans) == [(0, 4, "brand", "nike"), (5, 11, "brand", "adidas")]


def test_bio_apostrophe_accents_unknown_types_and_specials(tok):
    text = "levi's café jeans"
    spans = [{"start": 0, "end": 6, "type": "brand"}, {"start": 7, "end": 11, "type": "shop"}]
    enc, labels, tokens = _align(tok, text, spans)
    assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX
    assert _tagged(tokens, labels)[1:5] == [("levi", "B-brand"), ("'", "I-brand"), ("s", "I-brand"), ("cafe", "O")]
    assert _roundtrip(tok, text, spans) == [(0, 6, "brand", "levi's")]


def test_bio_lenient_decoding_of_stray_i_tag(tok):
    text = "red nike"
    enc = tok(text, return_offsets_mapping=True)
    ids = [0, TAG_INDEX["I-colour"], TAG_INDEX["I-brand"], 0]
    spans = decode_bio(text, enc["offset_mapping"], enc.word_ids(), ids, TAGS)
    assert [(s["text"], s["type"]) for s in spans] == [("red", "colour"), ("nike", "brand")]


# -- encoder ----------------------------------------------------------------------------------
def test_encode_texts_shape_norm_order_and_batching(tiny):
    model, tok = tiny
    texts = ["red running shoes for men", "tv", "", "a much longer product description of a blue kettle"]
    full = encode_texts(model, tok, texts, batch_size=64)
    small = encode_texts(model, tok, texts, batch_size=1)
    assert full.shape == (4, 32) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(full, small, atol=1e-5)
    np.testing.assert_allclose(encode_texts(model, tok, texts[1:2]), full[1:2], atol=1e-5)
    assert encode_texts(model, tok, []).shape == (0, 32)
    raw = encode_texts(model, tok, texts[:1], normalize=False)
    assert not np.isclose(np.linalg.norm(raw), 1.0)
    model.train()
    encode_texts(model, tok, texts[:2])
    assert model.training  # the caller's mode is restored
    model.eval()


def test_tiny_bert_is_deterministic_and_unknown_name_is_clear(tiny):
    again, _ = tiny_bert()
    assert all(torch.equal(a, b) for a, b in zip(tiny[0].parameters(), again.parameters()))
    with pytest.raises(ModelLoadError) as err:
        load_encoder("no-such-org/no-such-model-xyz")
    msg = str(err.value)
    assert "no-such-org/no-such-model-xyz" in msg and "tried" in msg and "local path" in msg


@pytest.mark.realweights
def test_real_minilm_embeddings_are_384d_and_semantic():
    model, tok = load_encoder(None)
    vecs = encode_texts(model, tok, ["red running shoes", "crimson sneakers for jogging", "the history of tax law"])
    assert vecs.shape == (3, 384)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3


# -- heads ------------------------------------------------------------------------------------
def _batch(tok, texts, pair=None):
    enc = tok(texts, pair, padding=True, return_tensors="pt") if pair else tok(texts, padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def _joint(tiny, **kw):
    torch.manual_seed(0)
    return JointIntentEntityModel(tiny_bert()[0], ["brand_query", "product_search", "out_of_scope"], TYPES, **kw)


def test_joint_head_shapes_loss_and_ignored_labels(tiny):
    model, tok = _joint(tiny), tiny[1]
    inputs = _batch(tok, ["red nike shoes", "hello there friend"])
    seq = inputs["input_ids"].shape[1]
    out = model(**inputs)
    assert out["intent_logits"].shape == (2, 3) and out["tag_logits"].shape == (2, seq, len(TAGS))
    tags = torch.full((2, seq), IGNORE_INDEX)
    tags[0, 1] = TAG_INDEX["B-colour"]
    out = model(**inputs, intent_labels=torch.tensor([0, 1]), tag_labels=tags)
    assert out["loss"].dim() == 0
    out["loss"].backward()
    assert model.intent_head.weight.grad is not None and model.tag_head.weight.grad is not None
    none = model(**inputs, intent_labels=torch.tensor([IGNORE_INDEX] * 2), tag_labels=torch.full((2, seq), IGNORE_INDEX))
    assert float(none["loss"].detach()) == 0.0 and none["loss"].requires_grad


def test_joint_predict_out_of_scope_threshold(tiny):
    model, tok = _joint(tiny, fallback_intent="fallback"), tiny[1]
    low = model.predict(["red nike shoes"], tok, threshold=1.01)[0]
    assert low["intent"] == "fallback" and low["raw_intent"] in model.intents and 0 < low["confidence"] <= 1
    high = model.predict(["red nike shoes"], tok, threshold=0.0)[0]
    assert high["intent"] == high["raw_intent"]
    for span in high["entities"]:
        assert "red nike shoes"[span["start"]:span["end"]] == span["text"]


def test_word_shapes_per_word_and_token():
    from ray_app.models.tokenize import WORD_SHAPES, shape_ids, word_shape

    names = [WORD_SHAPES[word_shape(w)] for w in ("play", "Heart", "NASA", "iPhone", "12", "3rd", "!", "O'Neil")]
    assert names == ["lower", "capitalised", "upper", "mixed", "digit", "digit", "none", "capitalised"]
    tok = load_encoder("tiny-bert")[1]
    text = "play Heartbeats by ABBA"
    enc = tok(text, return_offsets_mapping=True)
    got = shape_ids(text, enc["offset_mapping"], enc.word_ids())
    words = enc.word_ids()
    assert got[0] == got[-1] == 0  # [CLS], [SEP]
    by_word = {w: {g for g, wid in zip(got, words) if wid == w} for w in set(words) - {None}}
    assert all(len(v) == 1 for v in by_word.values())  # every sub-token carries its word's shape
    assert [WORD_SHAPES[next(iter(by_word[w]))] for w in sorted(by_word)] == ["lower", "capitalised", "lower", "upper"]


def test_joint_word_shape_starts_as_the_plain_model_and_learns(tiny, tmp_path):
    from ray_app.models.tokenize import encode_with_tags

    tok = tiny[1]
    plain, shaped = _joint(tiny), _joint(tiny, word_shape=True)
    plain.eval()
    shaped.eval()
    texts = ["Play Heart Beat by Nike", "red nike shoes"]
    enc = encode_with_tags(tok, texts, [[], []], TAG_INDEX, 32, with_shapes=True)
    inputs = {k: torch.tensor(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    shapes = torch.tensor(enc["shape_ids"])
    assert shapes[0].tolist() != shapes[1].tolist()
    # zero-initialised: the untrained shaped model is exactly the plain one
    torch.testing.assert_close(shaped(**inputs, shape_ids=shapes)["tag_logits"], plain(**inputs)["tag_logits"])
    with pytest.raises(ValueError, match="shape_ids"):
        shaped(**inputs)
    lora = apply_lora(shaped, LoraSettings(r=2, alpha=4))
    assert any("shape_head" in n and p.requires_grad for n, p in lora.named_parameters())
    lora.train()
    out = lora(**inputs, shape_ids=shapes, tag_labels=torch.tensor(enc["tag_labels"]))
    out["loss"].backward()
    grads = [p.grad for n, p in lora.named_parameters() if "shape_head" in n and p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    _perturb(lora)
    lora.eval()
    save_model(lora, tmp_path / "m", "intent_entity", "tiny-bert", LoraSettings(r=2, alpha=4))
    loaded, _, meta = load_saved_model(tmp_path / "m", merge=True)
    assert meta["head_config"]["word_shape"] is True
    torch.testing.assert_close(loaded(**inputs, shape_ids=shapes)["tag_logits"],
                               lora(**inputs, shape_ids=shapes)["tag_logits"], atol=1e-5, rtol=1e-4)
    pred = loaded.predict(texts, tok)  # predict derives the shapes from the raw text itself
    assert len(pred) == 2 and all(texts[i][s["start"]:s["end"]] == s["text"] for i, p in enumerate(pred) for s in p["entities"])


def test_ranker_pointwise_and_listwise_losses(tiny):
    tok = tiny[1]
    inputs = ranker_inputs(tok, ["nike shoes"] * 3, ["Nike running shoe", "Sony TV", "Adidas shoe"], 32, "residual")
    gains, groups = torch.tensor([3.0, 0.0, 1.0]), torch.tensor([0, 0, 0])
    for loss in ("pointwise", "listwise"):
        ranker = CrossEncoderRanker(tiny_bert()[0], loss=loss)
        out = ranker(**inputs, gains=gains, groups=groups)
        assert out["scores"].shape == (3,) and out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    # hand checks: target (2^g - 1) normalised. Equal scores, gains (3, 0): -(1, 0) . log(1/2, 1/2) = log 2;
    # gains (3, 2, 0), scores (0, 0, 0): -(7/10 log 1/3 + 3/10 log 1/3) = log 3; a list of only I is skipped
    assert float(listwise_loss(torch.zeros(2), torch.tensor([3.0, 0.0]), torch.tensor([0, 0]))) == pytest.approx(np.log(2))
    assert float(listwise_loss(torch.zeros(3), torch.tensor([3.0, 2.0, 0.0]), torch.tensor([0, 0, 0]))) == pytest.approx(np.log(3))
    scores = torch.tensor([2.0, 1.0, 0.0, 5.0, 1.0])
    two = listwise_loss(scores, torch.tensor([3.0, 2.0, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 0, 1, 1]))
    assert float(two) == pytest.approx(float(listwise_loss(scores[:3], torch.tensor([3.0, 2.0, 0.0]), torch.tensor([0, 0, 0]))))
    assert len(ranker.score("nike shoes", ["Nike running shoe", "Sony TV"], tok)) == 2
    with pytest.raises(ValueError):
        CrossEncoderRanker(tiny_bert()[0], loss="pairwise")


def test_ranker_pooling_segments_mean_or_cls_and_is_saved(tiny):
    tok = tiny[1]
    inputs = _batch(tok, ["nike shoes"] * 2, ["Nike running shoe with a long description", "Sony TV"])
    seg, mean, cls = (CrossEncoderRanker(tiny_bert()[0], pooling=p) for p in ("segments", "mean", "cls"))
    for model in (seg, mean, cls):
        model.eval()
    hidden = seg.backbone(**inputs).last_hidden_state
    am, tt = inputs["attention_mask"], inputs["token_type_ids"]
    # segments: cosine of the query-token mean and the product-token mean, times the scale (20 at start)
    q_mask = ((tt == 0) & (am == 1)).unsqueeze(-1).float()
    d_mask = ((tt == 1) & (am == 1)).unsqueeze(-1).float()
    cos = torch.nn.functional.cosine_similarity((hidden * q_mask).sum(1) / q_mask.sum(1),
                                                (hidden * d_mask).sum(1) / d_mask.sum(1), dim=-1)
    assert torch.allclose(seg(**inputs)["scores"], 20.0 * cos, atol=1e-5)
    mask = am.unsqueeze(-1).float()
    assert torch.allclose(mean(**inputs)["scores"],
                          mean.score_head((hidden * mask).sum(1) / mask.sum(1)).squeeze(-1), atol=1e-6)
    assert torch.allclose(cls(**inputs)["scores"], cls.score_head(hidden[:, 0]).squeeze(-1), atol=1e-6)
    assert [m.head_config()["pooling"] for m in (seg, mean, cls)] == ["segments", "mean", "cls"]
    # every parameter of the head takes part (DDP would fail on unused ones)
    seg.train()
    seg(**inputs, gains=torch.tensor([3.0, 0.0]), groups=torch.tensor([0, 0]))["loss"].backward()
    assert all(p.grad is not None for p in seg.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="token_type_ids"):
        seg(input_ids=inputs["input_ids"], attention_mask=am)
    with pytest.raises(ValueError, match="pooling"):
        CrossEncoderRanker(tiny_bert()[0], pooling="max")


def test_ranker_residual_starts_at_the_bi_encoder_cosine_and_learns(tiny):
    tok = tiny[1]
    queries, docs = ["nike shoes"] * 3, ["Nike running shoe", "Sony TV with a remote", "Adidas shoe"]
    ranker = CrossEncoderRanker(tiny_bert()[0])  # residual is the default
    assert ranker.head_config()["pooling"] == "residual"
    ranker.eval()
    inputs = ranker_inputs(tok, queries, docs, 32, "residual")
    q = encode_texts(ranker.backbone, tok, queries[:1], max_length=32)
    d = encode_texts(ranker.backbone, tok, docs, max_length=32)
    # untrained: exactly 20 x the bi-encoder cosine (the cross term starts at zero)
    assert np.allclose(ranker(**inputs)["scores"].detach().numpy(), 20.0 * (d @ q[0]), atol=1e-4)
    assert np.allclose(ranker.score("nike shoes", docs, tok, max_length=32), 20.0 * (d @ q[0]), atol=1e-4)
    # the query is encoded once for its three pairs; two queries in one batch keep their own rows
    assert inputs["q_input_ids"].shape[0] == 1 and inputs["q_index"].tolist() == [0, 0, 0]
    mixed = ranker_inputs(tok, ["nike shoes", "tv", "nike shoes"], docs, 32, "residual")
    assert mixed["q_index"].tolist() == [0, 1, 0]
    q2 = encode_texts(ranker.backbone, tok, ["nike shoes", "tv"], max_length=32)
    expected = 20.0 * np.array([d[0] @ q2[0], d[1] @ q2[1], d[2] @ q2[0]])
    assert np.allclose(ranker(**mixed)["scores"].detach().numpy(), expected, atol=1e-4)
    ranker.train()
    out = ranker(**inputs, gains=torch.tensor([3.0, 0.0, 2.0]), groups=torch.tensor([0, 0, 0]))
    out["loss"].backward()
    assert all(p.grad is not None for p in ranker.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="alone"):
        ranker(**{k: v for k, v in inputs.items() if not k.startswith(("q_", "d_"))})


def test_bi_encoder_infonce_with_hard_negatives_and_group_mask(tiny):
    tok = tiny[1]
    enc = BiEncoder(tiny_bert()[0], temperature=0.1)
    q, d, n = _batch(tok, ["a", "b", "c"]), _batch(tok, ["pa", "pb", "pc"]), _batch(tok, ["na", "nb", "nc"])
    out = enc(q["input_ids"], q["attention_mask"], d["input_ids"], d["attention_mask"],
              n["input_ids"], n["attention_mask"], groups=torch.tensor([0, 0, 1]))
    assert out["scores"].shape == (3, 6) and out["loss"].dim() == 0
    assert out["scores"][0, 1] < -1e30 and out["scores"][1, 0] < -1e30  # same query's other positive masked
    assert out["scores"][0, 2] > -1e30


# -- LoRA -------------------------------------------------------------------------------------
def _perturb(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.data.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_lora_wraps_saves_small_reloads_identical_and_merges(tiny, tmp_path):
    tok = tiny[1]
    model = apply_lora(_joint(tiny), LoraSettings(r=4, alpha=8, target_modules=["query", "key", "value", "dense"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("intent_head" in n for n in trainable) and any("tag_head" in n for n in trainable)
    _perturb(model)
    model.eval()
    inputs = _batch(tok, ["red nike shoes", "where is my order"])
    ref = model(**inputs)
    sizes = save_model(model, tmp_path / "m", "intent_entity", "tiny-bert", LoraSettings(r=4, alpha=8))
    assert 0 < sizes["adapter_bytes"] < sizes["full_model_bytes"] / 20
    loaded, _, meta = load_saved_model(tmp_path / "m")
    assert meta["head_config"]["intents"] == model.intents
    out = loaded(**inputs)
    torch.testing.assert_close(out["intent_logits"], ref["intent_logits"])
    torch.testing.assert_close(out["tag_logits"], ref["tag_logits"])
    merged = merge_lora(loaded)
    assert isinstance(merged, JointIntentEntityModel)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(**inputs)["intent_logits"], ref["intent_logits"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged(**inputs)["tag_logits"], ref["tag_logits"], atol=1e-5, rtol=1e-4)


def test_full_finetune_save_and_reload(tiny, tmp_path):
    tok = tiny[1]
    model = CrossEncoderRanker(tiny_bert()[0], loss="pointwise")
    _perturb(model)
    model.eval()
    inputs = ranker_inputs(tok, ["q", "q"], ["doc one", "doc two"], 32, "residual")
    sizes = save_model(model, tmp_path / "full", "ranker", "tiny-bert", None)
    assert sizes["adapter_bytes"] == 0
    loaded, _, _ = load_saved_model(tmp_path / "full")
    torch.testing.assert_close(loaded(**inputs)["scores"], model(**inputs)["scores"])


def test_lora_rejects_targets_that_match_nothing(tiny):
    with pytest.raises(ValueError, match="none of the LoRA target modules"):
        apply_lora(_joint(tiny), LoraSettings(target_modules=["q_proj", "v_proj"]))


# -- registry ---------------------------------------------------------------------------------
def _register(reg, tiny, snapshot="s1", seed=1):
    model = apply_lora(_joint(tiny), LoraSettings(r=2, alpha=4))
    _perturb(model, seed)
    version = reg.add("intent_entity", lambda folder: {
        k: v for k, v in save_model(model, folder, "intent_entity", "tiny-bert", LoraSettings(r=2, alpha=4),
                                    extra={"max_length": 32}).items() if k != "saved_bytes"},
        base_model="tiny-bert", lora=True, label_spaces={"intents": model.intents, "entity_types": TYPES},
        snapshot=snapshot, table_versions={"queries": 3}, config={"max_length": 32}, metrics={"val_score": 0.5})
    return model, version


def test_registry_versions_aliases_and_load(tiny, tmp_path):
    from ray_app.cli import JobError
    from ray_app.registry import Registry, RegistryError

    reg = Registry(tmp_path / "models")
    model, v1 = _register(reg, tiny)
    _, v2 = _register(reg, tiny, snapshot="s2")
    assert (v1.name, v2.name) == ("intent_entity-v1", "intent_entity-v2")
    assert v1.adapter_bytes > 0 and v1.table_versions == {"queries": 3}
    assert reg.promote("intent_entity-v1", "production").aliases == ["production"]
    assert reg.resolve("production").name == "intent_entity-v1"
    assert reg.resolve("intent_entity@production").name == "intent_entity-v1"
    assert reg.resolve("intent_entity@latest").name == "intent_entity-v2"
    reg.promote("intent_entity-v2", "production")  # moving an alias
    assert reg.resolve("production").name == "intent_entity-v2"
    assert [v.aliases for v in reg.list("intent_entity")] == [[], ["production"]]
    with pytest.raises(RegistryError, match="known versions: intent_entity-v1, intent_entity-v2"):
        reg.resolve("staging")
    with pytest.raises(JobError):
        reg.promote("intent_entity-v9", "production")
    loaded = reg.load_model("intent_entity-v1")
    assert loaded.task == "intent_entity" and loaded.version.name == "intent_entity-v1"
    inputs = _batch(tiny[1], ["red nike shoes"])
    model.eval()
    torch.testing.assert_close(loaded.model(**inputs)["intent_logits"], model(**inputs)["intent_logits"],
                               atol=1e-5, rtol=1e-4)
    assert loaded.predict(["red nike shoes"])[0]["raw_intent"] in model.intents


def test_registry_job_promote_and_list(tiny, tmp_path, capsys):
    from jobs.registry import main
    from ray_app.registry import Registry

    _register(Registry(tmp_path), tiny)
    assert main(["--action", "promote", "--name", "intent_entity-v1", "--alias", "candidate",
                 "--models-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["aliases"] == {"intent_entity": {"candidate": "intent_entity-v1"}}
    assert main(["--action", "list", "--models-dir", str(tmp_path)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["versions"][0]["name"] == "intent_entity-v1" and last["versions"][0]["aliases"] == ["candidate"]
    assert main(["--action", "promote", "--name", "nope-v1", "--alias", "x", "--models-dir", str(tmp_path)]) == 1
    assert "no model version" in capsys.readouterr().err



def test_registry_soup_averages_members_into_one_loadable_version(tiny, tmp_path, capsys):
    from jobs.registry import main
    from ray_app.registry import Registry

    reg = Registry(tmp_path)
    m1, v1 = _register(reg, tiny, seed=1)
    m2, v2 = _register(reg, tiny, snapshot="s2", seed=2)
    assert main(["--action", "soup", "--member", v1.name, "--member", "intent_entity@latest", "--alias", "candidate",
                 "--models-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["versions"][0]["name"] == "intent_entity-v3"
    soup = reg.resolve("intent_entity@candidate")
    assert soup.name == "intent_entity-v3" and not soup.lora and soup.adapter_bytes == 0
    assert soup.config["soup_of"] == [v1.name, v2.name] and soup.snapshot == "s1+s2"
    assert soup.config["members"][v2.name]["snapshot"] == "s2" and soup.label_spaces == v1.label_spaces
    a, b = merge_lora(m1).state_dict(), merge_lora(m2).state_dict()
    loaded = reg.load_model(soup.name)
    state = loaded.model.state_dict()
    assert set(state) == set(a)
    for key, value in state.items():  # every weight is the members' mean (LoRA merged first)
        torch.testing.assert_close(value, (a[key] + b[key]) / 2, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a["intent_head.weight"], b["intent_head.weight"])  # the members really differ
    assert loaded.predict(["red nike shoes"])[0]["raw_intent"] in v1.label_spaces["intents"]
    # refused: one member, the same version twice, members of different tasks
    assert main(["--action", "soup", "--member", v1.name, "--models-dir", str(tmp_path)]) == 1
    assert "at least two" in capsys.readouterr().err
    assert main(["--action", "soup", "--member", v1.name, "--member", v1.name, "--models-dir", str(tmp_path)]) == 1
    assert "two different versions" in capsys.readouterr().err
    ranker = CrossEncoderRanker(tiny_bert()[0])
    reg.add("ranker", lambda folder: {k: v for k, v in save_model(ranker, folder, "ranker", "tiny-bert", None,
                                                                  extra={"max_length": 32}).items() if k != "saved_bytes"},
            base_model="tiny-bert", lora=False, snapshot="s1")
    assert main(["--action", "soup", "--member", v1.name, "--member", "ranker-v1", "--models-dir", str(tmp_path)]) == 1
    assert "different task" in capsys.readouterr().err


def test_registry_export_writes_a_loadable_encoder_with_the_tuned_weights(tiny, tmp_path, capsys):
    from jobs.registry import main
    from ray_app.registry import Registry

    model, _ = _register(Registry(tmp_path / "reg"), tiny)
    out = tmp_path / "export"
    assert main(["--action", "export", "--name", "intent_entity-v1", "--out", str(out),
                 "--models-dir", str(tmp_path / "reg")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["exported_to"] == str(out.resolve())
    exported, tok = load_encoder(str(out))  # a plain Hugging Face folder, as --base-model takes it
    merged = merge_lora(model)
    texts = ["red nike shoes", "sony tv"]
    want = encode_texts(merged.backbone, tiny[1], texts, max_length=32)
    assert np.allclose(encode_texts(exported, tok, texts, max_length=32), want, atol=1e-5)
    assert not np.allclose(encode_texts(tiny_bert()[0], tiny[1], texts, max_length=32), want, atol=1e-3)  # tuned, not base
    # a second export into a non-empty folder is refused, not overwritten
    assert main(["--action", "export", "--name", "intent_entity-v1", "--out", str(out),
                 "--models-dir", str(tmp_path / "reg")]) == 1
    assert "not empty" in capsys.readouterr().err

# -- snapshot -> examples ---------------------------------------------------------------------
def test_intent_entity_examples_resolve_labels_and_carve_validation_by_query(store):
    from ray_app.training.data import load_task_data
    from tests.integration.test_train import fill_tiny_store

    fill_tiny_store(store, n=40)
    data = load_task_data(store, "s1", "intent_entity", validation_fraction=0.2, seed=3)
    again = load_task_data(store, "s1", "intent_entity", validation_fraction=0.2, seed=3)
    assert data.splits == again.splits  # deterministic
    train_q = {r["query_id"] for r in data.splits["train"]}
    val_q = {r["query_id"] for r in data.splits["validation"]}
    assert val_q and train_q and not train_q & val_q and len(train_q | val_q) == 40
    assert "out_of_scope" not in data.label_spaces["intents"]  # the rule labels lost to human ones
    assert data.label_spaces["entity_types"] == ["brand", "category", "colour"]
    assert data.table_versions["queries"] >= 1 and any("carved" in n for n in data.notes)
    row = next(r for r in data.splits["train"] if json.loads(r["spans"]))
    for span in json.loads(row["spans"]):
        assert span["type"] in data.label_spaces["entity_types"] and span["end"] > span["start"]


def test_validation_split_is_used_when_present(store):
    from ray_app.training.data import load_task_data
    from tests.integration.test_train import fill_tiny_store

    fill_tiny_store(store, n=30, with_validation=True)
    data = load_task_data(store, "s1", "intent_entity")
    assert len(data.splits["validation"]) == 5 and not data.notes


def test_ranker_and_retriever_examples_from_judgments(store):
    from ray_app.training.data import load_task_data
    from tests.integration.test_train import fill_judged_store

    fill_judged_store(store, n_queries=16)
    ranker = load_task_data(store, "s1", "ranker")
    row = ranker.splits["train"][0]
    assert len(json.loads(row["docs"])) == len(json.loads(row["gains"])) == 7
    assert sorted(json.loads(row["gains"]), reverse=True)[:2] == [3, 2] and "brand:" in json.loads(row["docs"])[0]
    assert len(ranker.splits["test"]) == 2  # queries r007, r015 carry split=test
    retriever = load_task_data(store, "s1", "retriever", hard_negatives=2)
    assert len(retriever.splits["train"]) + len(retriever.splits["validation"]) == 2 * 14  # E + S per query
    assert all(len(json.loads(r["negatives"])) == 2 for r in retriever.splits["train"])


def test_unknown_snapshot_and_empty_train_are_job_errors(store):
    from ray_app.cli import JobError
    from ray_app.store import rows_to_arrow, utcnow
    from ray_app.training.data import load_task_data

    with pytest.raises(JobError, match="snapshot 'nope' not found"):
        load_task_data(store, "nope", "intent_entity")
    store.upsert("queries", rows_to_arrow([{"query_id": "q1", "text": "x", "split": "test", "updated_at": utcnow()}], "queries"))
    store.upsert("labels", rows_to_arrow([{"label_id": "l1", "target_type": "query", "target_id": "q1", "task": "intent",
                                           "value": "product_search", "source": "human", "created_at": utcnow()}], "labels"))
    store.create_snapshot("only-test")
    with pytest.raises(JobError, match="no training examples"):
        load_task_data(store, "only-test", "intent_entity")


def test_train_job_errors_are_clean(store, tmp_path, capsys):
    from jobs.train import main
    from tests.integration.test_train import fill_tiny_store

    fill_tiny_store(store, n=20)
    common = ["--db", store.uri, "--models-dir", str(tmp_path / "m"), "--storage-path", str(tmp_path / "r")]
    assert main(["--task", "intent_entity", "--snapshot", "missing", *common]) == 1
    err = capsys.readouterr()
    assert "snapshot 'missing' not found" in err.err and "Traceback" not in err.err + err.out
    assert json.loads(err.out.strip().splitlines()[-1])["ok"] is False
    assert main(["--task", "intent_entity", "--snapshot", "s1", "--base-model", "no-org/no-model", *common]) == 1
    assert "encoder 'no-org/no-model' not found" in capsys.readouterr().err
    assert main(["--task", "intent_entity", "--snapshot", "s1", "--lora-r", "0", *common]) == 2
    assert "lora_r" in capsys.readouterr().err
    assert main(["--task", "classify", "--snapshot", "s1", *common]) == 2


# -- loop helpers -----------------------------------------------------------------------------
def test_linear_warmup_then_decay_schedule():
    from ray_app.training.loop import linear_schedule, make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    opt = make_optimizer(model, lr=1.0, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # LayerNorm + biases not decayed
    assert len(opt.param_groups[1]["params"]) == 3
    sched = linear_schedule(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_rank_slice_gives_every_validation_row_to_exactly_one_rank():
    from ray_app.training.loop import rank_slice

    batches = [{"query_id": np.array([f"q{i}" for i in range(j, j + 10)]), "x": np.arange(j, j + 10)}
               for j in range(0, 50, 10)]
    seen = [x for rank in range(3) for b in rank_slice(iter(batches), rank, 3) for x in b["x"].tolist()]
    assert sorted(seen) == list(range(50))


def test_ranker_training_lists_borrow_other_queries_products_as_negatives(tiny):
    from ray_app.training.tasks import collate_ranker

    batch = {"query_id": np.array(["q1", "q2"], dtype=object), "query": np.array(["red shoes", "tv"], dtype=object),
             "docs": np.array([json.dumps(["a", "b", "c"]), json.dumps(["x", "y", "a"])], dtype=object),
             "gains": np.array([json.dumps([3, 0, 2]), json.dumps([3, 1, 0])], dtype=object)}
    cfg = {"list_size": 16, "seed": 1, "max_length": 16, "batch_negatives": 8, "head_config": {"pooling": "residual"}}
    out = collate_ranker(batch, tiny[1], cfg)
    # q1: a, b, c + x, y from q2 (not "a" again: it is q1's own); q2: x, y, a + b, c from q1 ("a" is its own)
    assert out["groups"].tolist() == [0] * 5 + [1] * 5
    assert out["gains"].tolist() == [3, 0, 2, 0, 0, 3, 1, 0, 0, 0]
    assert out["d_input_ids"].shape[0] == out["input_ids"].shape[0] == 10
    assert out["q_input_ids"].shape[0] == 2 and out["q_index"].tolist() == [0] * 5 + [1] * 5  # each query encoded once
    # validation (sample=False) scores each query's own judged list only
    plain = collate_ranker(batch, tiny[1], cfg, sample=False)
    assert plain["gains"].tolist() == [3, 0, 2, 3, 1, 0] and plain["groups"].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(collate_ranker(batch, tiny[1], cfg)["input_ids"], out["input_ids"])  # reproducible
