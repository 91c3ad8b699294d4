"""benchmarks/multiplex_ranker.batch_summary: what the multiplexing benchmark reads back from a replica."""
from __future__ import annotations

import pytest

from benchmarks.multiplex_ranker import batch_summary

pytestmark = pytest.mark.unit


def test_batch_summary_counts_only_the_window():
    # (time, requests, forwards, concurrent forwards): an all-held batch of 2 arms is 2 forwards
    events = [(1.0, 2, 1, 1), (5.0, 2, 2, 1), (6.0, 1, 1, 2), (9.5, 2, 1, 1)]
    loads = [(0.5, "ranker-v1", 2.0), (6.5, "ranker-v2", 4.0)]
    out = batch_summary(events, loads, since=5.0, until=9.0)
    assert (out["batch_calls"], out["requests"], out["forwards"]) == (2, 3, 3)
    assert out["mean_requests_per_batch_call"] == 1.5 and out["mean_requests_per_forward"] == 1.0
    assert out["batch_size_histogram"] == {"1": 1, "2": 1}
    assert out["max_concurrent_forwards"] == 2
    assert (out["model_loads_total"], out["model_loads_in_window"], out["model_load_s_mean"]) == (2, 1, 3.0)


def test_batch_summary_of_an_empty_window():
    out = batch_summary([(1.0, 2, 1, 1)], [], since=2.0, until=3.0)
    assert out["batch_calls"] == 0 and out["mean_requests_per_forward"] is None
    assert out["max_concurrent_forwards"] == 0 and out["model_load_s_mean"] is None
