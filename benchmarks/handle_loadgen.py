"""Closed-loop load through a Serve DeploymentHandle, in the driver's event loop (no HTTP): the
load generator of benchmarks/serve_multiplex.py. `concurrency` workers each send the next request
when their answer came; warm-up (at least `warmup` s and until every worker had an answer) is not
counted; throughput is the answers completed inside the measured window per second, latency theirs.
An answer naming another model version than the request asked for counts as an error."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from benchmarks.loadgen import percentiles
from benchmarks.serve_load import load_avg


async def closed_loop(call: Callable, requests: list[dict], concurrency: int, seconds: float, warmup: float,
                      max_warmup: float = 120.0, timeout_s: float = 120.0) -> dict[str, Any]:
    """`concurrency` workers, each sending the next request when its answer came; warm-up (at least
    `warmup` s and until every worker had an answer) not counted; then `seconds` measured; drained."""
    records: list[tuple[float, str, str]] = []
    answered = [0] * concurrency
    window = {"from": float("inf"), "to": float("inf")}
    stop = asyncio.Event()

    async def worker(w: int) -> None:
        i = w
        while not stop.is_set():
            r = requests[i % len(requests)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                out = await asyncio.wait_for(call(r), timeout_s)
                status = "ok" if out["version"] == r["version"] else f"wrong_version:{out['version']}"
            except Exception as exc:  # noqa: BLE001 - a rejected or failed request is an error of the level
                status = type(exc).__name__
            t1 = time.perf_counter()
            answered[w] += 1
            if window["from"] <= t1 <= window["to"]:
                records.append((t1 - t0, status, r["arm"]))

    cpu0, begin = time.process_time(), time.perf_counter()
    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    while time.perf_counter() - begin < warmup or (min(answered) == 0 and time.perf_counter() - begin < max_warmup):
        await asyncio.sleep(0.05)
    load_before = load_avg()
    window["from"] = time.perf_counter()
    window["to"] = window["from"] + seconds
    epoch = [time.time(), time.time() + seconds]  # wall clock, to match what replicas logged
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    ok = [r for r in records if r[1] == "ok"]
    errors: dict[str, int] = {}
    for r in records:
        if r[1] != "ok":
            errors[r[1]] = errors.get(r[1], 0) + 1
    return {"concurrency": concurrency, "seconds": seconds, "warmup_s": round(window["from"] - begin, 1),
            "requests": len(records), "ok": len(ok), "errors": errors,
            "throughput_rps": round(len(ok) / seconds, 3),
            "latency_ms": percentiles([1000 * r[0] for r in ok]),
            "latency_ms_by_arm": {a: percentiles([1000 * r[0] for r in ok if r[2] == a]) for a in ("production", "candidate")},
            "candidate_share": round(sum(r[2] == "candidate" for r in records) / len(records), 3) if records else None,
            "driver_cpu_s": round(time.process_time() - cpu0, 1), "load_avg_before": load_before,
            "load_avg_after": load_avg(), "window_epoch_s": epoch}
