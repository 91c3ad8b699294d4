"""`python -m serve.run`: start the search app on Ray Serve (local Ray by default), wait until
every deployment answers `/healthz`, optionally send one search, one understand and one suggest
request, print what to `curl` next, and keep serving until Ctrl-C (`--keep-running`).

    python -m serve.run --workspace ./workspace --keep-running
    python -m serve.run --db /data/shop/lancedb --models-dir /data/shop/models --ranker-model none

The same app starts with `serve run serve/config.yaml` or `serve deploy serve/config.yaml`.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional, Sequence

from pydantic import BaseModel, Field

from ray_app.cli import JobError, main_wrapper
from schemas.serving import ServeAppConfig


class ServeRunConfig(ServeAppConfig):
    host: str = Field("127.0.0.1", description="HTTP host (0.0.0.0 to listen on every interface)")
    port: int = Field(8000, ge=1, le=65535)
    ray_address: Optional[str] = Field(None, description="Ray cluster address (default: start a local Ray)")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of the local Ray")
    smoke_query: Optional[str] = Field(None, description="send this search, an understand and a suggest request once up")
    keep_running: bool = Field(False, description="serve until Ctrl-C")
    ready_timeout_s: float = Field(300.0, gt=0)
    quiet: bool = False
    verbose: bool = False


class ServeRunResult(BaseModel):
    url: str
    smoke: dict[str, Any] = {}


def wait_ready(base: str, timeout_s: float) -> dict[str, Any]:
    """Poll /healthz until every deployment is ready; JobError with the last answer after `timeout_s`."""
    import requests

    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{base}/healthz", timeout=10)
            if r.status_code == 200:
                return r.json()
            last = r.text
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(1.0)
    raise JobError(f"the app did not become ready in {timeout_s:.0f}s: {last}")


def start(config: ServeAppConfig, host: str = "127.0.0.1", port: int = 8000, timeout_s: float = 300.0) -> str:
    """Deploy the app on the connected Ray (`serve.run`, not blocking) and wait until it is ready; its URL."""
    from ray import serve

    from serve.app import APP_NAME, build_app

    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    base = f"http://{host if host != '0.0.0.0' else '127.0.0.1'}:{port}"
    wait_ready(base, timeout_s)
    return base


def smoke(base: str, query: str) -> dict[str, Any]:
    """One search, one understand, one suggest and one home-recommendation request: their answers, shortened."""
    import requests

    found = requests.post(f"{base}/v1/search", json={"query": query, "size": 5}, timeout=60).json()
    understood = requests.post(f"{base}/v1/understand", json={"query": query}, timeout=60).json()
    prefix = query.split()[0][:4] if query.split() else query[:4]
    suggested = requests.get(f"{base}/v1/suggest", params={"q": prefix}, timeout=60).json()
    out: dict[str, Any] = {}
    home = requests.get(f"{base}/v1/recommend/home", params={"user_id": "new-visitor", "size": 5}, timeout=60)
    if home.status_code == 200:  # (404 when recommendations are off)
        home = home.json()
        out["recommend_home"] = {"strategy": home["strategy"], "versions": home["versions"],
                                 "top": [(i["product_id"], i.get("title", "")) for i in home["items"][:3]]}
    return out | {"search": {k: found.get(k) for k in ("request_id", "versions", "degraded", "total")} |
            {"top": [(h["product_id"], h.get("title", "")) for h in found.get("results", [])[:3]]},
            "understand": {k: understood.get(k) for k in ("intent", "confidence", "entities")},
            "suggest": {"prefix": prefix, "suggestions": [s["text"] for s in suggested.get("suggestions", [])[:5]]}}


def curl_lines(base: str, query: str) -> str:
    """What a user can try next, as shell commands."""
    body = json.dumps({"query": query, "size": 5, "explain": True})
    return "\n".join([
        f"curl -s {base}/v1/search -H 'content-type: application/json' -d '{body}'",
        f"curl -s {base}/v1/understand -H 'content-type: application/json' -d '{json.dumps({'query': query})}'",
        f"curl -s '{base}/v1/suggest?q={query[:3]}'",
        f"curl -s '{base}/v1/recommend/home?user_id=U00001&size=5'",
        f"curl -s '{base}/v1/recommend/similar?product_id=P000001&size=5'",
        f"curl -s {base}/healthz",
        f"open {base}/ (demo page) and {base}/docs (OpenAPI)"])


def run(config: ServeRunConfig) -> ServeRunResult:
    from ray_app.runtime import init_ray

    init_ray(config.ray_address, config.num_cpus, quiet=config.quiet, verbose=config.verbose)
    app_config = ServeAppConfig(**config.model_dump(include=set(ServeAppConfig.model_fields)))
    base = start(app_config, config.host, config.port, config.ready_timeout_s)
    out = ServeRunResult(url=base)
    if config.smoke_query:
        out.smoke = smoke(base, config.smoke_query)
    print(f"search app up at {base}; try:\n{curl_lines(base, config.smoke_query or 'running shoes')}", file=sys.stderr)
    if config.keep_running:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, ServeRunConfig, "serve.run", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
