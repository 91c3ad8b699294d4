"""One entry-point shape for every job: `--config file.yaml` plus one flag per config field.

Flags override the YAML; pydantic validates the merged result. The error policy of every job
lives in `main_wrapper` (and `ray_app.errors`): the last stdout line is always the JSON summary,
`{"ok": false, "error": ...}` on failure; a bad config exits 2, an expected failure (bad input,
a missing or unwritable path, an unknown name) exits 1 with one line on stderr, and a bug exits 1
with its traceback in a log file under `<workspace>/logs` whose path is printed.
"""
from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

C = TypeVar("C", bound=BaseModel)


class JobError(Exception):
    """An expected failure of a job (bad input, missing table...): reported without a traceback."""


class ConfigError(JobError):
    """A bad command line or config file: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of exiting, so main_wrapper still prints the JSON line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise ConfigError(f"{self.prog}: error: {message}")


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
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        elif default is None and "(default " in help_text:  # a workspace path: the description says its default
            parser.add_argument(flag, dest=name, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None,
                                help=f"{help_text}" + (" (required)" if field.is_required() else f" (default: {default})"))
    return parser


def load_config(config_cls: type[C], argv: Optional[Sequence[str]], prog: str, description: str) -> C:
    """Parse argv (YAML base + flag overrides) into a validated config, or raise ConfigError naming the field."""
    parser = build_parser(config_cls, prog, description)
    args = vars(parser.parse_args(argv))
    base: dict[str, Any] = {}
    config_path = args.pop("config")
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"{prog}: error: --config {config_path}: no such file")
        try:
            base = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{prog}: error: --config {config_path}: not valid YAML: {exc}") from exc
        if not isinstance(base, dict):
            raise ConfigError(f"{prog}: error: --config {config_path}: expected a mapping of fields, got {type(base).__name__}")
    overrides = {k: v for k, v in args.items() if v is not None}
    try:
        return config_cls.model_validate({**base, **overrides})
    except ValidationError as exc:
        lines = [f"{prog}: error: invalid config"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(config)"
            lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})"[:500])
        raise ConfigError("\n".join(lines)) from exc


def strict_json(value: Any) -> Any:
    """NaN and infinities (an F1 with nothing to score) as null: the summary line is strict JSON for any parser."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def main_wrapper(run: Callable[[C], BaseModel], config_cls: type[C], prog: str, description: str,
                 argv: Optional[Sequence[str]] = None) -> int:
    """Load config, call run(config), print the result's one-line JSON summary last; return the exit code."""
    from ray_app.errors import describe, is_expected, write_log
    from ray_app.runtime import configure_output

    try:
        config = load_config(config_cls, argv, prog, description)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return _failed(str(exc), 2)
    configure_output(verbose=bool(getattr(config, "verbose", False)))
    try:
        result = run(config)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return _failed("interrupted", 130)
    except Exception as exc:  # the one place where every job's failures become an exit code
        message = describe(exc)
        if is_expected(exc):
            print(f"{prog}: error: {message}", file=sys.stderr)
            return _failed(message, 1)
        log = write_log(exc, prog, getattr(config, "workspace", None))
        print(f"{prog}: internal error: {message} (traceback in {log})", file=sys.stderr)
        return _failed(f"internal error: {message}", 1, log=str(log))
    print(json.dumps(strict_json(result.model_dump(mode="json")), default=str, allow_nan=False))
    return 0


def _failed(message: str, code: int, **extra: str) -> int:
    sys.stderr.flush()
    print(json.dumps({"ok": False, "error": message, **extra}), flush=True)
    return code
