"""The shop's app: QueryUnderstanding, Retriever, Ranker, Suggest, Recommender and EventWriter
bound into one graph behind the SearchIngress. Built by a function (nothing happens at import time), so Serve's import path is
`serve.app:build_app` with the app config as `args`:

    serve run serve/config.yaml                      # the checked-in config (serve build format)
    serve run serve.app:build_app db=/data/shop/lancedb ranker_model=none
    python -m serve.run --workspace /data/shop       # the same from Python, with a readiness check

Per-deployment Serve options come from the config's `deployments` (name -> options), and a Serve
config file's `deployments:` section overrides both (Serve applies it last).
"""
from __future__ import annotations

from typing import Any, Optional

from ray.serve import Application

from schemas.serving import ServeAppConfig
from serve.events import EventWriter
from serve.ingress import SearchIngress
from serve.ranker import Ranker
from serve.recommender import Recommender
from serve.retriever import Retriever
from serve.suggest import Suggest
from serve.understanding import QueryUnderstanding

APP_NAME = "shopsearch"
DEPLOYMENTS = ("QueryUnderstanding", "Retriever", "Ranker", "Suggest", "Recommender", "EventWriter", "SearchIngress")


def _with_options(deployment, config: ServeAppConfig):
    opts = dict(config.deployments.get(deployment.name, {}))
    if "num_replicas" in opts:  # fixed replicas replace the code's autoscaling
        opts.setdefault("autoscaling_config", None)
    return deployment.options(**opts) if opts else deployment


def build_app(args: Optional[dict[str, Any]] = None) -> Application:
    """The bound graph for `args` (a ServeAppConfig as a dict; unknown keys are an error naming them)."""
    config = args if isinstance(args, ServeAppConfig) else ServeAppConfig(**(args or {}))
    unknown = set(config.deployments) - set(DEPLOYMENTS)
    if unknown:
        raise ValueError(f"deployments: unknown deployment(s) {', '.join(sorted(unknown))}; known: {', '.join(DEPLOYMENTS)}")
    stage = config.stage()
    ranking = config.experiment is not None or config.ranker_model.lower() != "none" or bool(config.shadow_model)
    understanding = _with_options(QueryUnderstanding, config).bind(stage)
    retriever = _with_options(Retriever, config).bind(stage)
    ranker = _with_options(Ranker, config).bind(stage) if ranking else None
    suggest = _with_options(Suggest, config).bind(stage) if config.suggest else None
    recommender = _with_options(Recommender, config).bind(stage) if config.recommend else None
    events = _with_options(EventWriter, config).bind(stage) if config.events else None
    return _with_options(SearchIngress, config).bind(stage, understanding, retriever, ranker, suggest, recommender, events)


def __getattr__(name: str) -> Any:
    """`serve.app:app` (what `serve build` needs: an Application) is the default graph, built on
    first access (PEP 562), never at import time."""
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
