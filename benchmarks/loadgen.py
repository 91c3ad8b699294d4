"""Closed-loop HTTP load generator (asyncio + aiohttp), run in its own process so that it can be
pinned to its own core (`taskset -c N python -m benchmarks.loadgen ...`), as Serve's own release
tests do. `concurrency` workers each send one search, wait for the answer and send the next; a
warm-up at the same concurrency comes first and is not counted. Throughput is the answers completed
inside the measured window per second, latency that of those answers (Little's law: in a closed
loop at steady state, latency = concurrency / throughput).

  python -m benchmarks.loadgen --url http://127.0.0.1:8300/v1/search --queries q.json --concurrency 16 --seconds 20

Last stdout line: one JSON object (throughput, p50/p95/p99, errors, degraded answers, medians of
the server's `timings_ms`, the generator's own CPU time and affinity).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99, mean and max of latencies in ms (all None when there are none)."""
    if not values:
        return {k: None for k in ("p50", "p95", "p99", "mean", "max")}
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(arr, 50)), 2), "p95": round(float(np.percentile(arr, 95)), 2),
            "p99": round(float(np.percentile(arr, 99)), 2), "mean": round(float(arr.mean()), 2),
            "max": round(float(arr.max()), 2)}


async def closed_loop(url: str, bodies: list[dict], concurrency: int, seconds: float, warmup: float,
                      max_warmup: float = 180.0, timeout_s: float = 300.0, method: str = "POST",
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
    """`concurrency` closed-loop workers: warm up for at least `warmup` s and until every worker has had
    one answer (a queue in front of the server is full only then; at most `max_warmup` s), measure
    `seconds`, then let every worker finish the request it has in flight (answered, not counted), so no
    work is left queued on the server for the next run. POST sends each body as JSON, GET as the query string."""
    records: list[tuple] = []
    answered = [0] * concurrency
    window = {"from": float("inf"), "to": float("inf")}
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:

        async def worker(w: int) -> None:
            i = w
            while not stop.is_set():
                body = bodies[i % len(bodies)]
                i += concurrency
                t0, payload = time.perf_counter(), {}
                status: Any
                try:
                    kwargs = {"json": body} if method == "POST" else {"params": body}
                    async with session.request(method, url, headers=headers, **kwargs) as resp:
                        status = resp.status
                        payload = await resp.json(content_type=None) if resp.status == 200 else {}
                except Exception as exc:  # noqa: BLE001 - a refused or timed-out request is an error of the level
                    status = type(exc).__name__
                t1 = time.perf_counter()
                answered[w] += 1
                if window["from"] <= t1 <= window["to"]:  # completed inside the window (may have started before)
                    records.append((t1 - t0, status, payload.get("timings_ms") or {}, payload.get("degraded") or []))

        begin = time.perf_counter()
        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        while (time.perf_counter() - begin < warmup
               or (min(answered) == 0 and time.perf_counter() - begin < max_warmup)):
            await asyncio.sleep(0.05)
        window["from"] = time.perf_counter()
        window["to"] = window["from"] + seconds
        warmed = min(answered) > 0
        await asyncio.sleep(seconds)
        stop.set()
        drain_from = time.perf_counter()
        await asyncio.gather(*tasks)
    ok = [r for r in records if r[1] == 200]
    errors = Counter(str(r[1]) for r in records if r[1] != 200)
    degraded = Counter(":".join(d.split(":")[:2]) for r in ok for d in r[3])  # "ranker: TimeoutError", no detail
    full = [r for r in ok if not r[3]]
    stages: dict[str, list[float]] = {}
    for r in ok:
        for k, v in r[2].items():
            stages.setdefault(k, []).append(float(v))
    return {"concurrency": concurrency, "seconds": seconds, "warmup_s": round(window["from"] - begin, 1),
            "warmed_every_worker": warmed, "drain_s": round(time.perf_counter() - drain_from, 1),
            "answered_total": sum(answered), "requests": len(records), "ok": len(ok), "errors": dict(errors),
            "error_rate": round(sum(errors.values()) / len(records), 4) if records else 0.0,
            "throughput_rps": round(len(ok) / seconds, 3),
            "degraded_answers": len(ok) - len(full), "degraded_reasons": dict(degraded),
            "full_answer_throughput_rps": round(len(full) / seconds, 3),
            "latency_ms": percentiles([1000 * r[0] for r in ok]),
            "full_answer_latency_ms": percentiles([1000 * r[0] for r in full]),
            "timings_ms_median": {k: round(statistics.median(v), 2) for k, v in sorted(stages.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="POST endpoint, e.g. http://127.0.0.1:8300/v1/search")
    parser.add_argument("--queries", required=True, help="JSON file: a list of query strings")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="at least this, and until every worker had an answer")
    parser.add_argument("--max-warmup", type=float, default=180.0)
    parser.add_argument("--size", type=int, default=10, help="results per page")
    args = parser.parse_args()
    bodies = [{"query": q, "size": args.size} for q in json.loads(Path(args.queries).read_text())]
    cpu0 = time.process_time()
    out = asyncio.run(closed_loop(args.url, bodies, args.concurrency, args.seconds, args.warmup, args.max_warmup))
    out["loadgen"] = {"cpu_s": round(time.process_time() - cpu0, 2), "affinity": sorted(os.sched_getaffinity(0)),
                      "pid": os.getpid()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
