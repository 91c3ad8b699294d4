"""A/B read-out of the logged feedback events (POST /v1/events carries each response's `arm`).

  python -m jobs.abtest [--control control] [--since 2026-12-01] [--shares control=0.9 --shares treatment=0.1]
         [--mde 0.1] [--candidate ranker@candidate [--logged-arm control] [--eta 1]] [--out abtest.json]

Per arm, per user (the unit the ingress randomises): the share of exposed users who clicked,
added to cart and purchased, with Wilson intervals; click-through per impression with a bootstrap
over users; each arm against control: difference and its interval, relative lift, p-value, the
test's power at a relative lift of --mde and the users per arm 80% power would need; a sample-ratio
check against --shares. With --candidate, an OFFLINE ESTIMATE of that ranker from the logged search
impressions: it re-ranks each logged request's products, and position-based inverse propensity
scoring turns the logged clicks into the clicks per request it would have had (ray_app/abtest.py
says under which assumption). Writes a Markdown report; the last stdout line is the JSON summary.
"""
from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

import pandas as pd

from ray_app.cli import JobError, main_wrapper
from ray_app.store import Store, utcnow
from schemas.abtest import AbtestConfig, AbtestResult
from schemas.config import join

COLUMNS = ["event_id", "event_type", "user_id", "arm", "request_id", "product_id", "position", "query_id", "timestamp"]


def _shares(config: AbtestConfig) -> Optional[dict[str, float]]:
    out = {}
    for item in config.shares:
        arm, sep, share = item.partition("=")
        try:
            out[arm.strip()] = float(share)
        except ValueError:
            raise JobError(f"--shares {item!r}: expected arm=share, e.g. control=0.9") from None
        if not sep or not arm.strip():
            raise JobError(f"--shares {item!r}: expected arm=share, e.g. control=0.9")
    return out or None


def _when(bound: str) -> pd.Timestamp:
    try:
        when = pd.Timestamp(bound)
    except ValueError:
        raise JobError(f"not an ISO time: {bound!r}") from None
    return when.tz_localize("UTC") if when.tzinfo is None else when


def read_events(store: Store, config: AbtestConfig) -> pd.DataFrame:
    """The logged events within --since/--until."""
    frame = store.read("events", columns=COLUMNS).to_pandas()
    ts = pd.to_datetime(frame["timestamp"], utc=True)
    keep = pd.Series(True, index=frame.index)
    if config.since:
        keep &= ts >= _when(config.since)
    if config.until:
        keep &= ts < _when(config.until)
    return frame[keep]


def candidate_ranks(config: AbtestConfig, store: Store, logged: pd.DataFrame) -> dict[tuple[str, str], int]:
    """The candidate ranker's rank of each logged product within its request (requests with a known query)."""
    from ray_app.models.scoring import score_pairs
    from ray_app.registry import RegistryError, load_model
    from ray_app.training.data import product_text

    queries = {r["query_id"]: r["text"] for r in store.read("queries", columns=["query_id", "text"]).to_pylist()}
    logged = logged[logged["query_id"].isin(queries)]
    if logged.empty:
        raise JobError("no logged impression names a query_id of the queries table: nothing for the candidate to re-rank")
    ids = sorted(set(logged["product_id"]))
    rows = store.read("products", columns=["product_id", "title", "brand", "category_path", "attributes", "description"],
                      where="product_id IN (" + ", ".join("'" + p.replace("'", "''") + "'" for p in ids) + ")").to_pylist()
    texts = {r["product_id"]: product_text(r) for r in rows}
    logged = logged[logged["product_id"].isin(texts)]
    try:
        loaded = load_model(config.candidate, config.models_dir, task="ranker")
    except RegistryError as exc:
        raise JobError(f"--candidate: {exc}") from exc
    scores = score_pairs(loaded.model, loaded.tokenizer, [queries[q] for q in logged["query_id"]],
                         [texts[p] for p in logged["product_id"]], loaded.max_length)
    scored = logged.assign(score=scores).sort_values(["request_id", "score", "product_id"], ascending=[True, False, True])
    scored["rank"] = scored.groupby("request_id").cumcount() + 1
    return {(str(r), str(p)): int(k) for r, p, k in zip(scored["request_id"], scored["product_id"], scored["rank"])}


def run(config: AbtestConfig) -> AbtestResult:
    from ray_app.abtest import ips_estimate, logged_impressions, markdown, read_out

    store = Store(config.db)
    events = read_events(store, config)
    try:
        result = read_out(events, config.control, config.alpha, config.mde, _shares(config), config.resamples)
    except ValueError as exc:
        raise JobError(f"{exc} ({len(events):,} events read)") from exc
    notes = []
    estimate = None
    if config.candidate:
        arm = config.logged_arm or result["control"]
        logged = logged_impressions(events, arm)
        estimate = ips_estimate(logged, candidate_ranks(config, store, logged), config.eta, config.clip,
                                config.resamples, alpha=config.alpha)
        estimate.update({"candidate": config.candidate, "logged_arm": arm})
        notes.append(f"{config.candidate}: an offline estimate from {arm}'s logged impressions, not an online result")
    report_file = join(str(config.report_dir), f"abtest-{utcnow():%Y%m%d-%H%M%S}.md")
    text = f"# A/B read-out\n\n{len(events):,} events; per user (the randomisation unit)\n\n{markdown(result)}"
    srm = result["sample_ratio"]
    if srm.get("checked"):
        text += f"\nsample ratio: chi2 {srm['chi2']:.2f}, p {srm['p_value']:.4f}" + (" - MISMATCH: check the split before reading the rates\n" if srm["mismatch"] else "\n")
    if estimate:
        text += (f"\n## Offline estimate of {config.candidate} (an estimate, not a measurement)\n\n{estimate['kind']}; "
                 f"{estimate['assumption']}.\n\nclicks per request: logged {estimate['logged_clicks_per_request']:.4f}, "
                 f"estimated {estimate['estimated_clicks_per_request']:.4f} [{estimate['interval'][0]:.4f}, "
                 f"{estimate['interval'][1]:.4f}] over {estimate['requests']:,} requests\n")
    from ray_app.object_store import write_text

    report = write_text(report_file, text)
    if config.out:
        write_text(config.out, json.dumps({"read_out": result, "offline_estimate": estimate}, indent=2, default=str))
    if not config.quiet:
        print(text, file=sys.stderr)
    return AbtestResult(control=result["control"], arms=result["arms"], versus_control=result["versus_control"],
                        sample_ratio=srm, offline_estimate=estimate, events=len(events), report=report, notes=notes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, AbtestConfig, "jobs.abtest", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
