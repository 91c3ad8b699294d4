"""App-level metrics of the ingress, exported through Ray's metrics pipeline (Prometheus format
on each node's metrics export port, beside Serve's own `ray_serve_*` series): requests by endpoint
and status, stage latencies, zero-result searches, degraded answers, recommendation lists by strategy and feedback events."""
from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


class AppMetrics:
    """Counters and histograms created once per ingress replica."""

    def __init__(self):
        self.requests = Counter("shopsearch_requests", description="HTTP requests by endpoint and status",
                                tag_keys=("endpoint", "status"))
        self.latency = Histogram("shopsearch_stage_latency_ms", description="time per stage of /v1/search (ms)",
                                 boundaries=BOUNDARIES_MS, tag_keys=("stage",))
        self.zero = Counter("shopsearch_zero_result_searches", description="searches that returned no product")
        self.recs = Counter("shopsearch_recommendations", description="recommendation lists by strategy "
                            "(personal, session, popular = cold start, similar, cart)", tag_keys=("strategy",))
        self.events = Counter("shopsearch_feedback_events", description="feedback events acknowledged (stored)")
        self.event_duplicates = Counter("shopsearch_feedback_duplicates", description="acknowledged events already stored (retries)")
        self.degraded_count = Counter("shopsearch_degraded_answers", description="answers with a stage skipped",
                                      tag_keys=("stage",))

    def count(self, endpoint: str, status: int) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})

    def search(self, timings_ms: dict[str, float], zero: bool) -> None:
        for stage, ms in timings_ms.items():
            self.latency.observe(ms, tags={"stage": stage})
        if zero:
            self.zero.inc()

    def degraded(self, stage: str) -> None:
        self.degraded_count.inc(tags={"stage": stage})

    def count_recommendation(self, strategy: str) -> None:
        self.recs.inc(tags={"strategy": strategy})

    def count_events(self, accepted: int, duplicates: int) -> None:
        if accepted:
            self.events.inc(accepted)
        if duplicates:
            self.event_duplicates.inc(duplicates)
