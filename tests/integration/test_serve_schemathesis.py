"""schemathesis against the running app's own OpenAPI schema: whatever it generates for each
operation (valid and invalid bodies, query strings), no answer is a 5xx, and every 4xx is the
API's JSON error body naming the field."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

pytestmark = [pytest.mark.integration, pytest.mark.model]
EXAMPLES = 25  # per operation and mode (valid, invalid)


def test_no_server_error_and_every_4xx_names_the_field(serve_app):
    base = serve_app["url"]
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/search", "/v1/understand", "/v1/suggest", "/healthz"}
    seen: dict[int, int] = {}
    for op, mode in [(op, mode) for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]:
        if mode is GenerationMode.NEGATIVE and op.path == "/healthz":
            continue  # no parameters: nothing to get wrong

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            response = case.call(base_url=base, timeout=60)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.method, case.path, case.body, case.query, response.text[:500])
            if 400 <= response.status_code < 500:
                body = response.json()
                assert body["error"] and body["request_id"], body
                if response.status_code in (400, 415, 422):
                    assert body["detail"] and all(d["field"] for d in body["detail"]), body

        check()
    assert seen.get(200, 0) > 0 and sum(v for k, v in seen.items() if 400 <= k < 500) > 0, seen  # both kinds exercised
