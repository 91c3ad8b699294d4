"""One entry-point shape for every job: `--config file.yaml` plus one flag per config field.

Flags override the YAML; pydantic validates the merged result; a bad value exits with status 2
and a message naming the field, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

C = TypeVar("C", bound=BaseModel)


class JobError(Exception):
    """An expected failure of a job (bad input, missing table...): reported without a traceback."""


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or (typing.get_origin(annotation) is typing.Union and bool in typing.get_args(annotation) and len(typing.get_args(annotation)) == 2 and type(None) in typing.get_args(annotation))


def _is_collection(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return any(_is_collection(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (list, dict, tuple)


def _choices(annotation: Any) -> Optional[tuple]:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _choices(arg)
            if found:
                return found
    return None


def build_parser(config_cls: type[BaseModel], prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with `--config` and one `--field-name` flag per config field."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with config fields (flags override it)")
    for name, field in config_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        choices = _choices(field.annotation)
        if choices:
            help_text = f"{help_text} [{'|'.join(map(str, choices))}]".strip()
        default = None if field.is_required() else field.default
        if default is None and field.default_factory is not None:
            default = field.default_factory()
        if _is_bool(field.annotation):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {default})")
        elif _is_collection(field.annotation):
            parser.add_argument(flag, dest=name, action="append", default=None,
                                help=f"{help_text} (repeatable)")
        else:
            parser.add_argument(flag, dest=name, default=None,
                                help=f"{help_text}" + (" (required)" if field.is_required() else f" (default: {default})"))
    return parser


def load_config(config_cls: type[C], argv: Optional[Sequence[str]], prog: str, description: str) -> C:
    """Parse argv (YAML base + flag overrides) into a validated config, or exit 2 with a message."""
    parser = build_parser(config_cls, prog, description)
    args = vars(parser.parse_args(argv))
    base: dict[str, Any] = {}
    config_path = args.pop("config")
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            parser.exit(2, f"{prog}: error: --config {config_path}: no such file\n")
        try:
            base = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            parser.exit(2, f"{prog}: error: --config {config_path}: not valid YAML: {exc}\n")
        if not isinstance(base, dict):
            parser.exit(2, f"{prog}: error: --config {config_path}: expected a mapping of fields, got {type(base).__name__}\n")
    overrides = {k: v for k, v in args.items() if v is not None}
    try:
        return config_cls.model_validate({**base, **overrides})
    except ValidationError as exc:
        lines = [f"{prog}: error: invalid config"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(config)"
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})"[:500])
        parser.exit(2, "\n".join(lines) + "\n")


def main_wrapper(run: Callable[[C], BaseModel], config_cls: type[C], prog: str, description: str,
                 argv: Optional[Sequence[str]] = None) -> int:
    """Load config, call run(config), print the result's one-line JSON summary last."""
    config = load_config(config_cls, argv, prog, description)
    try:
        result = run(config)
    except JobError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 1
    print(json.dumps(result.model_dump(mode="json"), default=str))
    return 0
