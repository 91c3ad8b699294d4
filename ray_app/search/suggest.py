"""Query suggestions (autocomplete): an in-memory index over the tables `jobs.suggest` writes.

A prefix matches a completion at any word boundary: its completed words equal whole words of
the completion, in order, and its last word (partial unless the prefix ends with a space) starts
the next word; a match after the completion's first word scores x INFIX_FACTOR (0.8). Every word
suffix of every completion is a key of one sorted list, so a prefix is one bisect range, and
min-rank segment trees over that list give a range's best n in O(n log N) without scanning it.
When fewer than k completions match exactly, the last word (3+ characters) may carry ONE edit
(Damerau-Levenshtein 1: substitution, insertion, deletion, transposition; the corrected word
keeps 3+ characters), generated only along real word prefixes of the vocabulary; such matches
rank below every exact one. A user with affinity (brand and category weights in [0, 1]) gets the
completions about those multiplied by 1 + MAX_BOOST * weight (at most x1.5) and flagged
`personalised`; one index per affinity value keeps that top k exact, still without a scan.
Order: final score descending, then text. Pure Python, no Ray; `from_store` reads the store once.
"""
from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable, Optional

import pyarrow as pa

from ray_app.search.suggest_build import KINDS, build_suggestions, normalize_suggestion

if TYPE_CHECKING:  # the store pulls in lancedb; the index itself needs only the two tables
    from ray_app.store import Store

__all__ = ["AFFINITY_TABLE", "INFIX_FACTOR", "KINDS", "MAX_BOOST", "SUGGESTIONS_TABLE", "SuggestIndex",
           "build_suggestions", "normalize_suggestion"]

SUGGESTIONS_TABLE = "suggestions"
AFFINITY_TABLE = "suggest_affinity"
MAX_BOOST = 0.5  # personalised score = score * (1 + MAX_BOOST * affinity), affinity in [0, 1]
INFIX_FACTOR = 0.8  # a match that starts after the completion's first word ("shoes" in "running shoes")
MIN_TYPO_CHARS = 3
_INF = float("inf")


class _PrefixIndex:
    """Sorted word-suffix keys of some completions, with two min-rank segment trees over them:
    one over every key, one over the keys that are a whole completion (matches at its start)."""

    def __init__(self, ranks: Iterable[int], texts: list[str]):
        entries = []
        for r in ranks:
            words = texts[r].split(" ")
            entries.extend((" ".join(words[i:]), r, i == 0) for i in range(len(words)))
        entries.sort()
        self.keys = [key for key, _, _ in entries]
        self.size = 1
        while self.size < max(1, len(entries)):
            self.size *= 2
        self.trees = (self._tree([r for _, r, _ in entries]),
                      self._tree([r if first else _INF for _, r, first in entries]))

    def _tree(self, leaves: list[float]) -> list[float]:
        tree: list[float] = [_INF] * (2 * self.size)
        tree[self.size:self.size + len(leaves)] = leaves
        for i in range(self.size - 1, 0, -1):
            tree[i] = min(tree[2 * i], tree[2 * i + 1])
        return tree

    def span(self, text: str, whole: bool) -> tuple[int, int]:
        """Key range starting with `text`: as a whole word (then a space or the end) or as a partial one."""
        # normalised keys hold no character below " ", so "text" .. "text!" is exactly text + end-or-space
        upper = text + "!" if whole else text[:-1] + chr(min(ord(text[-1]) + 1, 0x10FFFF))
        return bisect_left(self.keys, text), bisect_left(self.keys, upper)

    def best(self, spans: Iterable[tuple[int, int]], n: int, exclude: set[int], anchored: bool) -> list[int]:
        """The n smallest distinct ranks under the spans (only start-of-text keys if anchored), not excluded."""
        tree, size, heap = self.trees[anchored], self.size, []
        for lo, hi in spans:  # the O(log N) tree nodes that exactly cover [lo, hi)
            left, right = lo + size, hi + size
            while left < right:
                if left & 1:
                    heap.append((tree[left], left))
                    left += 1
                if right & 1:
                    right -= 1
                    heap.append((tree[right], right))
                left, right = left >> 1, right >> 1
        heapq.heapify(heap)
        out: list[int] = []
        seen: set[int] = set()
        while heap and len(out) < n:
            rank, node = heapq.heappop(heap)
            if rank == _INF:
                break
            if node >= size:
                if rank not in seen and rank not in exclude:
                    seen.add(rank)
                    out.append(int(rank))
            else:
                heapq.heappush(heap, (tree[2 * node], 2 * node))
                heapq.heappush(heap, (tree[2 * node + 1], 2 * node + 1))
        return out


def affinity_weights(rows: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], float]]:
    """`suggest_affinity` rows as user -> {(kind, value): weight}: taste weights kept in (0, 1], the
    price level and the catalogue's medians as computed."""
    weights: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
    for row in rows:
        if not (row.get("user_id") and row.get("value")):
            continue
        if row["kind"] in ("brand", "category"):
            if float(row.get("weight") or 0) > 0:
                weights[row["user_id"]][(row["kind"], row["value"])] = min(1.0, float(row["weight"]))
        elif row.get("weight") is not None:
            weights[row["user_id"]][(row["kind"], row["value"])] = float(row["weight"])
    return dict(weights)


class SuggestIndex:
    """Completions ranked by popularity, with word-boundary prefixes, one-typo tolerance and personalisation."""

    def __init__(self, rows: list[dict[str, Any]], affinity: dict[str, dict[tuple[str, str], float]],
                 build_id: str = ""):
        best: dict[str, dict[str, Any]] = {}
        for row in rows:  # texts are unique in what the job writes; keep the best row of any repeat
            text = normalize_suggestion(row["text"])
            if text and (text not in best or float(row["score"]) > best[text]["score"]):
                best[text] = {**row, "text": text, "score": float(row["score"])}
        ordered = sorted(best.values(), key=lambda r: (-r["score"], r["text"]))  # rank = position
        self.texts = [r["text"] for r in ordered]
        self.scores = [r["score"] for r in ordered]
        self.kinds = [r.get("kind") or "query" for r in ordered]
        self.brands = [r.get("brand") or "" for r in ordered]
        self.categories = [r.get("category") or "" for r in ordered]
        self.affinity = affinity
        self.build_id = build_id
        self._main = _PrefixIndex(range(len(ordered)), self.texts)
        wanted = {key for weights in affinity.values() for key in weights}
        about: dict[tuple[str, str], list[int]] = defaultdict(list)
        for r in range(len(ordered)):
            for key in (("brand", self.brands[r]), ("category", self.categories[r])):
                if key[1] and key in wanted:
                    about[key].append(r)
        self._about = {key: _PrefixIndex(ranks, self.texts) for key, ranks in about.items()}
        self._next: dict[str, set[str]] = defaultdict(set)  # word prefix -> letters that continue a word
        self._words: set[str] = set()
        for text in self.texts:
            for word in text.split(" "):
                self._words.add(word)
                for i in range(len(word)):
                    self._next[word[:i]].add(word[i])
                self._next.setdefault(word, set())
        self._next = dict(self._next)

    @classmethod
    def from_tables(cls, suggestions: pa.Table, affinity: Optional[pa.Table] = None) -> "SuggestIndex":
        """Index the `suggestions` table (text, score, kind, brand, category) and `suggest_affinity` rows."""
        missing = {"text", "score"} - set(suggestions.column_names)
        if missing:
            raise ValueError(f"suggestions table lacks column(s) {sorted(missing)}; it has {suggestions.column_names}")
        weights = affinity_weights(affinity.to_pylist() if affinity is not None else [])
        stamped = "build_id" in suggestions.column_names and suggestions.num_rows > 0
        build_id = suggestions.column("build_id")[0].as_py() if stamped else ""
        return cls(suggestions.to_pylist(), weights, build_id=build_id or "")

    def update_affinity(self, weights: dict[str, dict[tuple[str, str], float]]) -> None:
        """Replace these users' weights (a shopper's new events, between two jobs.suggest runs); one swap."""
        self.affinity = {**self.affinity, **weights}

    @classmethod
    def from_store(cls, store: "Store") -> "SuggestIndex":
        """Read the latest `suggestions` and `suggest_affinity` tables of a store into an index."""
        from ray_app.store import StoreError

        names = store.table_names()
        missing = [t for t in (SUGGESTIONS_TABLE, AFFINITY_TABLE) if t not in names]
        if missing:
            raise StoreError(f"table(s) {', '.join(missing)} not found in {store.uri}; build them with "
                             f"`python -m jobs.suggest --db {store.uri}`")
        return cls.from_tables(store.db.open_table(SUGGESTIONS_TABLE).to_arrow(),
                               store.db.open_table(AFFINITY_TABLE).to_arrow())

    def __len__(self) -> int:
        return len(self.texts)

    def complete(self, prefix: str, user_id: Optional[str] = None, k: int = 10) -> list[dict[str, Any]]:
        """Up to k completions of `prefix`, best first: {"text", "score", "kind", "personalised"}."""
        if k <= 0 or not prefix or not prefix.strip():
            return []
        text = normalize_suggestion(prefix)
        if not text:  # only control or format characters
            return []
        whole = prefix[-1].isspace()  # "nike " means the word nike, not nikes
        affinity = self.affinity.get(user_id) if user_id else None
        found = self._tier([text], whole, k, affinity, set())
        words = text.split(" ")
        if len(found) < k and len(words[-1]) >= MIN_TYPO_CHARS:
            head = " ".join(words[:-1])
            fixed = [f"{head} {v}" if head else v for v in self._variants(words[-1], whole)]
            found += self._tier(fixed, whole, k - len(found), affinity, {r for r, _, _ in found})
        return [{"text": self.texts[r], "score": round(score, 6), "kind": self.kinds[r], "personalised": boosted}
                for r, score, boosted in found]

    def _factor(self, rank: int, affinity: Optional[dict[tuple[str, str], float]]) -> float:
        if not affinity:
            return 1.0
        a = max(affinity.get(("brand", self.brands[rank]), 0.0), affinity.get(("category", self.categories[rank]), 0.0))
        return 1.0 + MAX_BOOST * a

    def _tier(self, texts: list[str], whole: bool, n: int, affinity: Optional[dict[tuple[str, str], float]],
              exclude: set[int]) -> list[tuple[int, float, bool]]:
        """The best n matches of any of `texts`: (rank, final score, personalised)."""
        candidates: set[int] = set()
        # Exact top n under the factors: a completion beaten by n others of its own index and tree
        # (the others' factors are at least its own there) cannot make the top n.
        indexes = [self._main] + [self._about[key] for key in affinity or () if key in self._about]
        for index in indexes:
            spans = [index.span(t, whole) for t in texts]
            for anchored in (False, True):
                candidates.update(index.best(spans, n, exclude, anchored))
        scored = []
        for r in candidates:
            text = self.texts[r]
            at_start = any(text == t or text.startswith(t + " ") if whole else text.startswith(t) for t in texts)
            factor = self._factor(r, affinity)
            scored.append((-self.scores[r] * factor * (1.0 if at_start else INFIX_FACTOR), text, r, factor > 1.0))
        scored.sort()
        return [(r, -neg, boosted) for neg, _, r, boosted in scored[:n]]

    def _variants(self, word: str, whole: bool) -> list[str]:
        """Spellings one edit from `word` that start (or, when whole, are) a vocabulary word."""
        out: set[str] = set()
        for i in range(len(word) + 1):
            head = word[:i]
            letters = self._next.get(head)
            if letters is None:  # no word starts with head: an edit further right cannot help
                break
            if i < len(word):
                out.add(head + word[i + 1:])  # deletion
                out.update(head + c + word[i + 1:] for c in letters)  # substitution
            if i + 1 < len(word):
                out.add(head + word[i + 1] + word[i] + word[i + 2:])  # transposition
            if i < len(word) or whole:  # a letter added after a partial word is already a prefix match
                out.update(head + c + word[i:] for c in letters)  # insertion
        out.discard(word)
        known = self._words if whole else self._next
        return sorted(v for v in out if len(v) >= MIN_TYPO_CHARS and v in known)
