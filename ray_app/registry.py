"""The model registry: every trained model is a version `<task>-v<n>` with its lineage.

Stored as `registry.json` next to the artifacts in the models dir (default
$SHOPSEARCH_MODELS or <workspace>/models), not as a LanceDB table: the registry must travel
with the artifact folders it points to (copy one folder to a Serve node and both come along),
Serve must resolve an alias without opening the data store, and the store's table schemas are
a shared contract of data tables. Writes hold an fcntl lock and replace the file atomically,
so concurrent training jobs never hand out the same version. Aliases (production,
candidate...) are per task: `production` of the ranker and of intent_entity are different
models; `resolve("intent_entity@production")` names one, a bare alias works when only one
task has it, and `<task>@latest` is the newest version. Besides the trained tasks, `fusion`
versions record the hybrid's fitted fusion settings (`fusion.json`, no weights; `jobs.fuse`).

Shared by every node: the models dir may be `s3://bucket/prefix` (any S3-compatible server via
`AWS_ENDPOINT_URL`). There `registry.json` is one object changed only by compare-and-swap
(read it with its ETag, write it back `If-Match` that ETag, or `If-None-Match: *` for the first
write; on a conflict read again and retry), the same conditional PUTs LanceDB commits with, so no
lock server, database or shared disk is needed and two jobs never get the same version. A
version is added in three steps: its number is reserved (a `pending` entry, by CAS), its folder
is uploaded to `<prefix>/<task>-v<n>/`, then the entry is recorded (by CAS): a reader never sees
a version whose files are not all there. Version folders are immutable, so each process keeps a
local copy on first use (`$SHOPSEARCH_MODEL_CACHE`, default `~/.cache/shopsearch/models`).
A local models dir keeps the fcntl lock and atomic replace of the same JSON.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from ray_app.cli import JobError
from ray_app.object_store import S3Folder, is_uri
from schemas.config import MODELS_ENV, default_workspace, join
from schemas.fusion import FUSION_FILE, FUSION_TASK, FusionSpec
from schemas.training import TASKS, ModelVersion

MODELS_DIR_ENV = MODELS_ENV
MODEL_CACHE_ENV = "SHOPSEARCH_MODEL_CACHE"
REGISTRY_FILE = "registry.json"
_NAME = re.compile(r"^(?P<task>[a-z_]+)-v(?P<version>\d+)$")
REGISTRY_TASKS: tuple[str, ...] = TASKS + (FUSION_TASK,)  # trained models, and fitted fusion settings


class RegistryError(JobError):
    """Unknown version or alias, or a bad promotion."""


def default_models_dir() -> str:
    """$SHOPSEARCH_MODELS, else <workspace>/models (the workspace from $SHOPSEARCH_WORKSPACE or ./workspace)."""
    return os.environ.get(MODELS_DIR_ENV) or join(default_workspace(), "models")


def model_cache_dir() -> Path:
    """Where version folders of a registry on object storage are kept locally."""
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "shopsearch" / "models").expanduser()


class Registry:
    """A JSON model registry under `models_dir`: a local folder or `s3://bucket/prefix`."""

    CAS_ATTEMPTS = 60

    def __init__(self, models_dir: Optional[str | Path] = None):
        where = str(models_dir or default_models_dir())
        if is_uri(where):
            if not where.startswith("s3://"):
                raise RegistryError(f"models dir {where!r}: on object storage the registry needs s3:// "
                                    f"(any S3-compatible server through AWS_ENDPOINT_URL)")
            self.remote: Optional[S3Folder] = S3Folder(where)
            self.uri = self.remote.uri
            self.root = model_cache_dir() / self.remote.bucket / self.remote.prefix  # local copies of versions
        else:
            self.remote = None
            self.root = Path(where).expanduser().resolve()
            self.uri = str(self.root)

    # -- storage ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".registry.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.root / f".{REGISTRY_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(data, indent=2, default=str))
            os.replace(tmp, self.root / REGISTRY_FILE)

    def _update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply `change` to the registry atomically and return what it returns. On object storage
        `change` runs on a fresh read after every lost race, so it must only edit `data`."""
        if self.remote is None:
            with self._locked() as data:
                return change(data)
        for attempt in range(self.CAS_ATTEMPTS):
            found, etag = self.remote.get_json(REGISTRY_FILE)
            data = self._defaults(found or {})
            result = change(data)
            if self.remote.put_json_if(REGISTRY_FILE, data, etag):
                return result
            time.sleep(min(2.0, 0.02 * 2 ** min(attempt, 6)) * (0.5 + uuid.uuid4().int % 1000 / 1000))
        raise RegistryError(f"registry {self.uri}: {self.CAS_ATTEMPTS} conflicting writes in a row; try again")

    @staticmethod
    def _defaults(data: dict[str, Any]) -> dict[str, Any]:
        data.setdefault("versions", {})
        data.setdefault("aliases", {})
        return data

    def _read(self) -> dict[str, Any]:
        if self.remote is not None:
            return self._defaults(self.remote.get_json(REGISTRY_FILE)[0] or {})
        path = self.root / REGISTRY_FILE
        return self._defaults(json.loads(path.read_text()) if path.is_file() else {})

    def _version(self, data: dict[str, Any], name: str) -> ModelVersion:
        entry = dict(data["versions"][name])
        entry["path"] = f"{self.uri}/{name}" if self.remote else str((self.root / entry["path"]).resolve())
        entry["aliases"] = sorted(a for a, n in data["aliases"].get(entry["task"], {}).items() if n == name)
        return ModelVersion(**entry)

    def local_path(self, version: ModelVersion | str) -> Path:
        """The version's folder on this machine: itself for a local registry; for one on object
        storage a local copy, downloaded once (versions never change once recorded)."""
        name = version if isinstance(version, str) else version.name
        if self.remote is None:
            return Path(self.get(name).path if isinstance(version, str) else version.path)
        data = self._read()
        if name not in data["versions"]:
            raise RegistryError(self._unknown(data, name))
        # the artifact id keeps a copy of an older registry's `ranker-v1` at the same URI from being reused
        folder = self.root / f"{name}-{data['versions'][name].get('artifact', 'x')[:12]}"
        if not folder.is_dir():
            partial = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
            try:
                if not self.remote.download_folder(name, partial):
                    raise RegistryError(f"{name}: no files under {self.uri}/{name}/")
                try:
                    partial.rename(folder)
                except OSError:  # another process finished the same copy first
                    if not folder.is_dir():
                        raise
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        return folder

    # -- writing ---------------------------------------------------------------------------
    def add(self, task: str, save: Callable[[Path], dict[str, Any]], **fields: Any) -> ModelVersion:
        """Allocate `<task>-v<n>`, call `save(folder)` (returns extra fields, e.g. sizes), record it.
        The number is reserved first, so the slow save runs without holding the registry."""
        if task not in REGISTRY_TASKS:
            raise RegistryError(f"unknown task {task!r}; known: {', '.join(REGISTRY_TASKS)}")
        token = uuid.uuid4().hex

        def reserve(data: dict[str, Any]) -> tuple[int, str]:
            taken = [int(m["version"]) for m in data["versions"].values() if m["task"] == task]
            taken += [int(p["version"]) for p in data.get("pending", {}).values() if p["task"] == task]
            if self.remote is None and self.root.is_dir():  # folders left by a job killed mid-save
                taken += [int(m.group("version")) for p in self.root.iterdir()
                          if (m := _NAME.match(p.name)) and m.group("task") == task]
            version = max(taken, default=0) + 1
            name = f"{task}-v{version}"
            data.setdefault("pending", {})[name] = {
                "task": task, "version": version, "token": token, "host": socket.gethostname(), "pid": os.getpid(),
                "started_at": datetime.now(timezone.utc).replace(tzinfo=None).isoformat()}
            return version, name

        def release(data: dict[str, Any]) -> None:
            if data.get("pending", {}).get(name, {}).get("token") == token:
                del data["pending"][name]

        version, name = self._update(reserve)
        folder = self.root / (f"{name}-{token[:12]}" if self.remote else name)
        try:
            folder.mkdir(parents=True)
            extra = save(folder) or {}
            entry = {"name": name, "task": task, "version": version, "path": name,
                     "created_at": datetime.now(timezone.utc).replace(tzinfo=None).isoformat(), **fields, **extra}
            if self.remote:
                entry["artifact"] = token
            ModelVersion(**{**entry, "path": str(folder)})  # validate before recording
            if self.remote:
                self.remote.upload_folder(folder, name)

            def record(data: dict[str, Any]) -> None:
                release(data)
                data["versions"][name] = entry

            self._update(record)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            try:
                if self.remote:
                    self.remote.delete_folder(name)
                self._update(release)
            except Exception:  # noqa: BLE001 - the original error matters more; the number stays reserved
                pass
            raise
        return self.get(name)

    def promote(self, name: str, alias: str) -> ModelVersion:
        """Point `alias` of the version's task at `name` (moves it if it pointed elsewhere)."""
        if not re.match(r"^[A-Za-z][A-Za-z0-9_.-]*$", alias) or alias == "latest":
            raise RegistryError(f"alias {alias!r} must start with a letter, use letters, digits, _ . - and not be 'latest'")
        def point(data: dict[str, Any]) -> None:
            if name not in data["versions"]:
                raise RegistryError(self._unknown(data, name))
            data["aliases"].setdefault(data["versions"][name]["task"], {})[alias] = name

        self._update(point)
        return self.get(name)

    def record_gate(self, name: str, gate: dict[str, Any]) -> ModelVersion:
        """Append a promotion gate's figures and verdict to version `name`'s lineage."""
        def append(data: dict[str, Any]) -> None:
            if name not in data["versions"]:
                raise RegistryError(self._unknown(data, name))
            data["versions"][name].setdefault("gates", []).append(gate)

        self._update(append)
        return self.get(name)

    def soup(self, members: Sequence[str], task: Optional[str] = None) -> ModelVersion:
        """A uniform model soup (Wortsman et al., 2022) as a new version: the members' weights,
        LoRA merged, averaged into one full-weights model. Members must share task, base encoder,
        head and label spaces (e.g. seeds or Tune trials of one setting); the soup costs one model
        at inference, not one per member. Its lineage lists every member with its snapshot."""
        from ray_app.models.lora import average_weights, load_saved_model, save_model

        versions = [self.resolve(m, task) for m in members]
        names = list(dict.fromkeys(v.name for v in versions))
        if len(names) < 2:
            raise RegistryError(f"a soup needs at least two different versions, got {', '.join(names) or 'none'}")
        versions = [self.get(n) for n in names]
        if any(v.task == FUSION_TASK for v in versions):
            raise RegistryError("fusion settings have no weights to average; a soup takes trained models")
        first = versions[0]
        loaded = [load_saved_model(self.local_path(v), merge=True, device="cpu") for v in versions]
        for v, (_, _, meta) in zip(versions[1:], loaded[1:]):
            for what, mine, theirs in (("task", v.task, first.task), ("base model", v.base_model, first.base_model),
                                       ("head", meta["head_config"], loaded[0][2]["head_config"]),
                                       ("label spaces", v.label_spaces, first.label_spaces),
                                       ("max_length", meta.get("max_length"), loaded[0][2].get("max_length"))):
                if mine != theirs:
                    raise RegistryError(f"cannot average {v.name} with {first.name}: different {what} ({mine!r} vs {theirs!r})")
        try:
            weights = average_weights([m for m, _, _ in loaded])
        except ValueError as exc:
            raise RegistryError(f"cannot average {', '.join(names)}: {exc}") from exc
        model, meta = loaded[0][0], loaded[0][2]
        model.load_state_dict(weights)
        snapshots = list(dict.fromkeys(v.snapshot for v in versions))
        same_tables = all(v.table_versions == first.table_versions for v in versions)

        def save(folder: Path) -> dict[str, Any]:
            sizes = save_model(model, folder, first.task, first.base_model, None,
                               extra={"max_length": meta.get("max_length"), "snapshot": "+".join(snapshots), "soup_of": names})
            return {"full_model_bytes": sizes["full_model_bytes"]}

        return self.add(first.task, save, base_model=first.base_model, lora=False, label_spaces=first.label_spaces,
                        snapshot="+".join(snapshots), table_versions=first.table_versions if same_tables else {},
                        config={"method": "uniform_soup", "soup_of": names,
                                "members": {v.name: {"snapshot": v.snapshot, "table_versions": v.table_versions,
                                                     "metrics": v.metrics, "config": v.config} for v in versions},
                                "max_length": meta.get("max_length")},
                        metrics={})

    def demote(self, task: str, alias: str) -> None:
        self._update(lambda data: data["aliases"].get(task, {}).pop(alias, None))

    # -- reading ---------------------------------------------------------------------------
    def list(self, task: Optional[str] = None) -> list[ModelVersion]:
        data = self._read()
        names = [n for n, m in data["versions"].items() if task in (None, m["task"])]
        return sorted((self._version(data, n) for n in names), key=lambda m: (m.task, m.version))

    def aliases(self) -> dict[str, dict[str, str]]:
        return self._read()["aliases"]

    def get(self, name: str) -> ModelVersion:
        data = self._read()
        if name not in data["versions"]:
            raise RegistryError(self._unknown(data, name))
        return self._version(data, name)

    def resolve(self, name_or_alias: str, task: Optional[str] = None) -> ModelVersion:
        """A version from its name, `task@alias`, a bare alias (with `task` or unique), or `task@latest`."""
        data = self._read()
        key = name_or_alias.strip()
        if key in data["versions"]:
            return self._version(data, key)
        if "@" in key:
            task, key = key.split("@", 1)
        if key == "latest":
            found = [m for m in data["versions"].values() if task in (None, m["task"])]
            if task is None or not found:
                raise RegistryError(f"'latest' needs a task with versions (e.g. intent_entity@latest); {self._known(data)}")
            return self._version(data, max(found, key=lambda m: m["version"])["name"])
        hits = {t: a[key] for t, a in data["aliases"].items() if key in a and task in (None, t)}
        if len(hits) == 1:
            return self._version(data, next(iter(hits.values())))
        if len(hits) > 1:
            raise RegistryError(f"alias {key!r} is set for several tasks ({', '.join(sorted(hits))}); "
                                f"say which, e.g. {sorted(hits)[0]}@{key}")
        raise RegistryError(self._unknown(data, name_or_alias))

    def _known(self, data: dict[str, Any]) -> str:
        aliases = [f"{t}@{a}" for t, m in data["aliases"].items() for a in m]
        return (f"known versions: {', '.join(sorted(data['versions'])) or 'none'}; "
                f"aliases: {', '.join(sorted(aliases)) or 'none'} (registry {self.uri})")

    def _unknown(self, data: dict[str, Any], name: str) -> str:
        return f"no model version or alias {name!r}; {self._known(data)}"

    def load_model(self, name_or_alias: str, task: Optional[str] = None, merge: bool = True,
                   device: Optional[str] = None) -> "LoadedModel":
        """A ready-to-run model: base encoder + adapter (merged by default) or full weights."""
        from ray_app.models.lora import load_saved_model

        version = self.resolve(name_or_alias, task)
        if version.task == FUSION_TASK:
            raise RegistryError(f"{version.name} holds fusion settings, not a model: use Registry.load_fusion")
        model, tokenizer, meta = load_saved_model(self.local_path(version), merge=merge, device=device)
        max_length = meta.get("max_length") or version.config.get("max_length") or 64
        loaded = LoadedModel(model=model, tokenizer=tokenizer, version=version, max_length=int(max_length))
        if version.task == "ranker":  # fixed weights: product encodings can be kept between requests
            from ray_app.models.scoring import ProductVectorCache

            loaded.product_cache = ProductVectorCache()
        return loaded

    def load_fusion(self, name_or_alias: str) -> tuple[FusionSpec, ModelVersion]:
        """A fusion version's spec (its fusion.json) and record; `fusion@production` style aliases work."""
        version = self.resolve(name_or_alias, FUSION_TASK)
        if version.task != FUSION_TASK:
            raise RegistryError(f"{version.name} is a {version.task} model, not fusion settings (task {FUSION_TASK})")
        path = self.local_path(version) / FUSION_FILE
        try:
            return FusionSpec.model_validate_json(path.read_text()), version
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{version.name}: cannot read its fusion spec {path}: {exc}") from exc


@dataclass
class LoadedModel:
    """A registry model in eval mode with its tokenizer and version record."""

    model: Any
    tokenizer: Any
    version: ModelVersion
    max_length: int = 64
    product_cache: Any = None  # ranker: models.scoring.ProductVectorCache (a new one if the model changes)

    @property
    def task(self) -> str:
        return self.version.task

    def predict(self, texts: Sequence[str], threshold: Optional[float] = None) -> list[dict[str, Any]]:
        """intent_entity: intent, confidence and entity spans per text."""
        return self.model.predict(list(texts), self.tokenizer, max_length=self.max_length, threshold=threshold)

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        """ranker: a relevance score per product text."""
        return self.model.score(query, list(docs), self.tokenizer, max_length=self.max_length, cache=self.product_cache)

    def encode(self, texts: Sequence[str], batch_size: int = 64):
        """retriever (or any task): L2-normalised mean-pooled embeddings."""
        from ray_app.models.encoder import encode_texts

        return encode_texts(self.model, self.tokenizer, list(texts), batch_size=batch_size, max_length=self.max_length)


def version_folder(path: str | Path) -> Path:
    """A version's folder on this machine from its `ModelVersion.path`: the folder itself, or for a
    registry on object storage (`s3://.../<task>-v<n>`) the local copy (downloaded once). Train
    workers on other nodes get the path, not a driver's local folder."""
    if not is_uri(path):
        return Path(path)
    parent, name = str(path).rstrip("/").rsplit("/", 1)
    return Registry(parent).local_path(name)


def resolve(name_or_alias: str, models_dir: Optional[str | Path] = None, task: Optional[str] = None) -> ModelVersion:
    return Registry(models_dir).resolve(name_or_alias, task)


def load_model(version_or_alias: str, models_dir: Optional[str | Path] = None, task: Optional[str] = None,
               merge: bool = True, device: Optional[str] = None) -> LoadedModel:
    return Registry(models_dir).load_model(version_or_alias, task=task, merge=merge, device=device)


def promote(name: str, alias: str, models_dir: Optional[str | Path] = None) -> ModelVersion:
    return Registry(models_dir).promote(name, alias)


def list_versions(task: Optional[str] = None, models_dir: Optional[str | Path] = None) -> list[ModelVersion]:
    return Registry(models_dir).list(task)
