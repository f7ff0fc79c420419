"""The one config system: typed sections (dataclasses), recipes merged under YAML files and `--set` overrides,
validation when the config is built (before any cluster starts), and one fingerprint rule.

A config is a dataclass whose fields are sections (dataclasses with defaults) and maybe a few plain values.
Precedence, lowest first: the section defaults, a named recipe (nested dict), a YAML file, `--set` overrides.
Sections check their own values in `__post_init__`, so a bad value fails where the config is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def merge(base: Mapping, update: Mapping) -> dict:
    """`update` over `base`, recursively for mappings on both sides."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return raw


def parse_set(items: Iterable[str]) -> dict:
    """["run.steps=50", "optim.betas=[0.9, 0.98]"] -> {"run": {"steps": 50}, "optim": {...}} (values as YAML)."""
    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
        *sections, name = key.split(".")
        target = overrides
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = yaml.safe_load(value)
    return overrides


def build_section(cls: type, values: Mapping | None, where: str) -> Any:
    """`cls(**values)` with unknown fields named, lists turned into tuples where the field is a tuple."""
    values = dict(values or {})
    if not isinstance(values, dict):
        raise ValueError(f"config section {where!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown fields in section {where!r}: {sorted(unknown)}; known: {sorted(known)}")
    for name, value in values.items():
        if isinstance(value, list) and typing.get_origin(hints[name]) is tuple:
            values[name] = tuple(value)
        elif _is_number_type(hints[name], float) and isinstance(value, str):
            # YAML 1.1 (PyYAML) reads "3e-4" as a string: a number written that way is still a number.
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"section {where!r}: {name} must be a number, got {value!r}") from None
        elif _is_number_type(hints[name], int) and isinstance(value, str):
            raise ValueError(f"section {where!r}: {name} must be an integer, got {value!r}")
    try:
        return cls(**values)
    except TypeError as error:
        raise ValueError(f"section {where!r}: {error}") from error


def _is_number_type(hint: Any, kind: type) -> bool:
    """Whether a field annotated `hint` holds a `kind` (`float`, `float | None`)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return hint is kind or (union and kind in typing.get_args(hint))


def section_types(cls: type) -> dict[str, type]:
    """The fields of config class `cls` that are sections, with their classes."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def build_tree(cls: type, merged: Mapping, **plain: Any) -> Any:
    """The config `cls` from a nested dict: every section built and checked, `plain` fields passed as they are."""
    sections = section_types(cls)
    unknown = set(merged) - set(sections)
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}; known: {sorted(sections)}")
    built = {name: build_section(section, merged.get(name), name) for name, section in sections.items()}
    return cls(**plain, **built)


def fingerprint(data: Any, drop: Mapping[str, Iterable[str]] | None = None, length: int = 12) -> str:
    """The hash of a config's content: sha256 of its canonical JSON, without the `drop`ped {section: fields}
    (where a run is stored or logged, never what shapes its result)."""
    data = to_plain(data)
    for section, names in (drop or {}).items():
        for name in names:
            data.get(section, {}).pop(name, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:length]


def to_plain(value: Any) -> Any:
    """Dataclasses, tuples and paths as plain JSON-able values (a deep copy)."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def flat_params(tree: Mapping) -> dict[str, str]:
    """`section.field` -> text, for MLflow params (top-level plain values keep their name)."""
    out = {}
    for name, value in to_plain(tree).items():
        if isinstance(value, dict):
            out |= {f"{name}.{k}": json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in value.items()}
        else:
            out[name] = str(value)
    return out


def absolute(value: str | None) -> str | None:
    """A local path made absolute (Ray workers run in another directory); URIs and empty values as they are."""
    return value if not value or "://" in value else str(Path(value).resolve())


class ConfigTree:
    """Mixin of a config dataclass: plain dict, MLflow params, fingerprint without the run's volatile fields."""

    def to_dict(self) -> dict:
        return to_plain(self)

    def flat(self) -> dict[str, str]:
        """`section.field` -> value, for MLflow params."""
        return flat_params(self.to_dict())

    def fingerprint(self) -> str:
        """Hash of everything that shapes the result (not where it is stored or logged)."""
        return fingerprint(self.to_dict(), {"run": type(self.run).VOLATILE})


@dataclass(kw_only=True)
class RunSettings:
    """The `run` fields every training kind shares: scaling, failures, storage, tracking, naming."""

    seed: int = 0
    log_every: int = 10
    """Optimizer steps between metric logs (the only host syncs of the loop)."""
    num_workers: int = 2
    """Ray Train workers (ranks)."""
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    cpu_bf16: bool = False
    """bf16 autocast on CPU workers (`beit3_core.runtime.precision`): faster where the CPU has native bf16,
    no longer bit-exact with fp32."""
    max_failures: int = 2
    """Worker failures Ray Train recovers from (restarting from the last checkpoint); -1 = unlimited."""
    keep_checkpoints: int = 2
    ray_address: str | None = None
    """None = reuse an initialised Ray, else RAY_ADDRESS, else a local Ray started for the run."""
    storage_path: str = "runs/train"
    """Local folder or a pyarrow/fsspec URI (s3://, gs://, ...) shared by all nodes."""
    name: str | None = None
    """Ray run name; default `<kind>-<config hash>-<timestamp>`, so a new run never resumes an old one."""
    mlflow_tracking_uri: str | None = None
    """Default: MLFLOW_TRACKING_URI, else sqlite:///<storage_path>/mlflow.db."""
    mlflow_experiment: str = "beit3"
    mlflow_parent_run_id: str | None = None
    """Nest the run under this MLflow run (the pipeline's parent run)."""
    fault_injection: dict = field(default_factory=dict)
    """Tests only: {"kill_rank": r, "at_step": s, "marker": path} SIGKILLs that worker once."""

    VOLATILE: typing.ClassVar[tuple[str, ...]] = (
        "name",
        "storage_path",
        "mlflow_tracking_uri",
        "mlflow_experiment",
        "mlflow_parent_run_id",
        "ray_address",
        "fault_injection",
        "max_failures",
        "keep_checkpoints",
    )
    """Fields that say where a run goes and how it survives, never what it computes: out of the fingerprint."""

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker <= 0 or self.log_every < 1:
            raise ValueError(
                f"run: need num_workers >= 1, cpus_per_worker > 0, log_every >= 1; got {self.num_workers}, "
                f"{self.cpus_per_worker}, {self.log_every}"
            )
        if self.keep_checkpoints < 1:
            raise ValueError(f"run.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
