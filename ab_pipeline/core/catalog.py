"""The metric catalog: metrics defined once, in `dags/metrics/*.yaml`, referenced by name.

A catalog file is `metrics: {name: entry}`. An entry is an inline metric of the experiment
config (the same `type` and fields, ab_pipeline.core.config) plus a required `description` and
`owner`, and optionally `guardrail`, the budget an experiment gets when it lists the metric
among its guardrails without one of its own. An experiment refers to an entry as
`metrics: {name: {ref: catalog_name}}`, optionally overriding `window` and `cuped`;
`guardrails: {name: {}}` takes the entry's budget, a budget of its own replaces it.

References are resolved on the raw YAML before the experiment is validated, so the resolved
config is an ordinary ExperimentConfig (every stage reads it as if the metric were inline); its
`metric_sources` remember which catalog file each referenced metric came from. Loading is YAML
and pydantic only, cached per directory by the files' mtimes: the DAG factory resolves every
config's references at parse time.

Where the catalog is, for a config file: $AB_PIPELINE_METRICS_DIR when set; else a `metrics/`
folder beside the config's folder (`dags/experiments/x.yaml` -> `dags/metrics/`), when there is
one; else the repository's `dags/metrics/`.

Every metric's resolved definition (its fields that decide its numbers, and for a guardrail its
budget) is hashed into results.json (`metric_definitions`), so a readout says when a metric's
definition changed since the previous readout (`definition_changes`, shown in the brief).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from ab_pipeline.core import config as config_module
from ab_pipeline.core.config import (
    _IDENT,
    _METRIC_TYPES,
    _YAML_LOADER,
    CatalogEntryFields,
    ExperimentConfig,
    Guardrail,
    Metric,
    MetricRef,
    MetricSource,
)
from ab_pipeline.core.errors import ConfigProblem
from ab_pipeline.core.paths import REPO_ROOT

METRICS_DIR_ENV = "AB_PIPELINE_METRICS_DIR"
REPO_CATALOG = REPO_ROOT / "dags" / "metrics"
# Fields of a catalog entry that are not the metric's own (CatalogEntryFields). `description`
# belongs to both: required in the catalog, and the metric carries it into the brief.
_ENTRY_ONLY = ("owner", "guardrail")
_OVERRIDES = tuple(name for name in MetricRef.model_fields if name != "ref")
_BUDGETS = tuple(name for name in Guardrail.model_fields if name.startswith("max_"))
_METRIC = TypeAdapter(Metric)


@dataclass(frozen=True)
class CatalogProblem:
    """One thing wrong in a catalog file: the file, the field (dotted path) and why."""

    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}"


@dataclass(frozen=True)
class CatalogMetric:
    """One valid catalog entry. `fields` is the metric as written (with its description),
    ready to be an inline metric; `guardrail` the default budget as written, if any."""

    name: str
    file: str  # as shown to people: relative to the repository when inside it
    fields: Mapping[str, Any]
    description: str
    owner: str
    guardrail: Mapping[str, Any] | None

    @property
    def type(self) -> str:
        return str(self.fields["type"])


@dataclass(frozen=True)
class Catalog:
    directory: Path
    metrics: dict[str, CatalogMetric] = field(default_factory=dict)
    # Every problem of every file; `broken` maps a name that cannot be used (an invalid entry,
    # or a name defined in two files) to its problems, so a reference can say why.
    problems: list[CatalogProblem] = field(default_factory=list)
    broken: dict[str, list[CatalogProblem]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def display_path(path: Path) -> str:
    """`path` relative to the repository when inside it (as results.json's `config_path`)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def catalog_dir_beside(folder: Path) -> Path:
    """The catalog of the configs in `folder` (see the module's docstring)."""
    configured = os.environ.get(METRICS_DIR_ENV)
    if configured:
        return Path(configured)
    beside = folder.resolve().parent / "metrics"
    return beside if beside.is_dir() else REPO_CATALOG


def catalog_dir_for(config_path: str | Path | None) -> Path:
    """The catalog a config file's references resolve against."""
    if config_path is None or str(config_path).startswith("<"):  # parse_config's "<config>"
        configured = os.environ.get(METRICS_DIR_ENV)
        return Path(configured) if configured else REPO_CATALOG
    return catalog_dir_beside(Path(config_path).parent)


# ---- loading ----------------------------------------------------------------------------------

_CACHE: dict[Path, tuple[tuple[tuple[str, bytes | str], ...], Catalog]] = {}


def load_catalog(directory: Path) -> Catalog:
    """Every `*.yaml` in `directory`, validated; a missing directory is an empty catalog.

    Cached by the files' names and contents (reading a few small files costs far less than
    parsing them, and an edit within the file system's mtime granularity still shows): the DAG
    factory asks once per config.
    """
    directory = directory.resolve()
    contents: list[tuple[str, bytes | str]] = []  # the file's bytes, or why it is unreadable
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        try:
            contents.append((path.name, path.read_bytes()))
        except OSError as error:
            contents.append((path.name, str(error)))
    signature = tuple(contents)
    cached = _CACHE.get(directory)
    if cached is not None and cached[0] == signature:
        return cached[1]
    catalog = _load(directory, [(directory / name, text) for name, text in contents])
    _CACHE[directory] = (signature, catalog)
    return catalog


def _load(directory: Path, files: Iterable[tuple[Path, bytes | str]]) -> Catalog:
    catalog = Catalog(directory)
    defined_in: dict[str, list[str]] = {}
    for path, text in files:
        file = display_path(path)
        entries = _read_file(text, file, catalog)
        for name, raw in entries.items():
            defined_in.setdefault(name, []).append(file)
            entry, problems = _entry(name, raw, file)
            if problems:
                catalog.problems.extend(problems)
                catalog.broken.setdefault(name, []).extend(problems)
            elif entry is not None and name not in catalog.metrics:
                catalog.metrics[name] = entry
    for name, defining in defined_in.items():
        if len(defining) > 1:
            catalog.metrics.pop(name, None)
            for file in defining:
                others = ", ".join(f for f in defining if f != file)
                problem = CatalogProblem(
                    file, f"metrics.{name}", f"also defined in {others}; a name is defined once"
                )
                catalog.problems.append(problem)
                catalog.broken.setdefault(name, []).append(problem)
    return catalog


def _read_file(text: bytes | str, file: str, catalog: Catalog) -> dict[str, Any]:
    """The file's `metrics` mapping; problems with the file itself go to `catalog`."""
    try:
        if isinstance(text, str):
            raise OSError(text)
        data = yaml.load(text, Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError) as error:
        catalog.problems.append(CatalogProblem(file, "(yaml)", str(error)))
        catalog.unreadable.append(file)
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        reason = "expected `metrics:`, a mapping of metric name -> definition"
        catalog.problems.append(CatalogProblem(file, "(top level)", reason))
        catalog.unreadable.append(file)
        return {}
    for key in data:
        if key != "metrics":
            catalog.problems.append(
                CatalogProblem(file, str(key), "unknown field (a catalog file holds `metrics:`)")
            )
    entries: dict[str, Any] = {}
    for name, raw in data["metrics"].items():
        if not isinstance(name, str) or not _IDENT.match(name):
            catalog.problems.append(
                CatalogProblem(file, f"metrics.{name}", "use letters, digits and '_'")
            )
            continue
        entries[name] = raw
    return entries


def _entry(name: str, raw: Any, file: str) -> tuple[CatalogMetric | None, list[CatalogProblem]]:
    where = f"metrics.{name}"
    if not isinstance(raw, dict):
        return None, [CatalogProblem(file, where, "expected a mapping of the metric's fields")]
    metric_fields = {k: v for k, v in raw.items() if k not in _ENTRY_ONLY}
    entry_fields = {k: raw[k] for k in (*_ENTRY_ONLY, "description") if k in raw}
    problems = []
    try:
        entry = CatalogEntryFields.model_validate(entry_fields)
    except ValidationError as error:
        problems += _problems(error, file, where)
    try:
        _METRIC.validate_python(metric_fields)
    except ValidationError as error:
        problems += [
            p for p in _problems(error, file, where) if not p.field.endswith("description")
        ]
    if problems:
        return None, problems
    return CatalogMetric(
        name=name,
        file=file,
        fields=metric_fields,
        description=entry.description,
        owner=entry.owner,
        guardrail=raw.get("guardrail"),
    ), []


def _problems(error: ValidationError, file: str, where: str) -> list[CatalogProblem]:
    out = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        if loc and loc[0] in _METRIC_TYPES:  # the discriminated union's tag
            loc = loc[1:]
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; docs/config.md lists a metric's fields)"
        out.append(CatalogProblem(file, ".".join([where, *loc]), message))
    return out


# ---- resolving an experiment's references -----------------------------------------------------


def has_references(data: Any) -> bool:
    metrics = data.get("metrics") if isinstance(data, dict) else None
    return isinstance(metrics, dict) and any(
        isinstance(m, dict) and "ref" in m for m in metrics.values()
    )


@dataclass
class Resolution:
    data: dict[str, Any]
    sources: dict[str, MetricSource]
    problems: list[ConfigProblem]


def resolve_references(data: dict[str, Any], config_path: str) -> Resolution:
    """The config's raw data with every `{ref: ...}` metric replaced by the catalog's definition
    (overrides applied) and catalog guardrail budgets filled in; problems name the field.

    A reference that cannot be resolved is replaced by a placeholder metric so that validating
    the rest does not add follow-on complaints (the primary "not defined", ...).
    """
    catalog = load_catalog(catalog_dir_for(config_path))
    metrics = dict(data["metrics"])
    sources: dict[str, MetricSource] = {}
    problems: list[ConfigProblem] = []
    unresolved: set[str] = set()
    for local, raw in data["metrics"].items():
        if not (isinstance(raw, dict) and "ref" in raw):
            continue
        entry, found = _lookup(catalog, str(local), raw)
        problems += found
        if entry is None:
            metrics[local] = {"type": "proportion", "event": "unresolved"}
            unresolved.add(str(local))
            continue
        merged = dict(entry.fields)
        merged.update({k: raw[k] for k in _OVERRIDES if k in raw})
        metrics[local] = {k: v for k, v in merged.items() if v is not None}
        sources[str(local)] = MetricSource(entry.name, entry.file)
    resolved = {**data, "metrics": metrics}
    guardrails = data.get("guardrails")
    if isinstance(guardrails, dict):
        resolved["guardrails"], found = _guardrails(guardrails, sources, catalog, unresolved)
        problems += found
    return Resolution(resolved, sources, problems)


def _lookup(
    catalog: Catalog, local: str, raw: dict[str, Any]
) -> tuple[CatalogMetric | None, list[ConfigProblem]]:
    where = f"metrics.{local}"
    try:
        ref = MetricRef.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            loc = ".".join([where, *(str(p) for p in item["loc"])])
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = (
                    "a catalog reference overrides only "
                    f"{', '.join(_OVERRIDES)}; define the metric inline to change more"
                )
            problems.append(ConfigProblem(loc, message))
        return None, problems
    entry = catalog.metrics.get(ref.ref)
    if entry is not None:
        return entry, []
    if ref.ref in catalog.broken:
        why = "; ".join(str(p) for p in catalog.broken[ref.ref])
        return None, [
            ConfigProblem(f"{where}.ref", f"catalog metric {ref.ref!r} is invalid: {why}")
        ]
    return None, [ConfigProblem(f"{where}.ref", missing_reason(catalog, ref.ref))]


def missing_reason(catalog: Catalog, name: str) -> str:
    where = display_path(catalog.directory)
    reason = f"no metric {name!r} in the catalog {where}"
    known = sorted({*catalog.metrics, *catalog.broken})
    nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if nearest:
        reason += f" (nearest: {nearest[0]!r})"
    elif not known:
        reason += " (it defines no metrics)"
    if catalog.unreadable:
        reason += f"; unreadable catalog file(s): {', '.join(catalog.unreadable)}"
    return reason


def _guardrails(
    guardrails: dict[str, Any],
    sources: Mapping[str, MetricSource],
    catalog: Catalog,
    unresolved: set[str],
) -> tuple[dict[str, Any], list[ConfigProblem]]:
    """A referenced metric's guardrail without a budget takes the catalog entry's."""
    out: dict[str, Any] = {}
    problems = []
    for name, raw in guardrails.items():
        given = {} if raw is None else raw
        if not isinstance(given, dict) or any(k in given for k in _BUDGETS):
            out[name] = raw  # a budget of its own (or not a mapping: validation says so)
            continue
        if name in unresolved:
            out[name] = {**given, "max_increase": 0}  # placeholder: the reference is reported
            continue
        source = sources.get(name)
        default = catalog.metrics[source.catalog_metric].guardrail if source else None
        if source is None:
            out[name] = raw  # an inline metric: validation reports the missing budget
            continue
        if default is None:
            out[name] = {**given, "max_increase": 0}  # placeholder: reported here
            problems.append(
                ConfigProblem(
                    f"guardrails.{name}",
                    f"no budget here, and catalog metric {source.catalog_metric!r} "
                    f"({source.catalog_file}) has no `guardrail` budget: give one of "
                    f"{', '.join(_BUDGETS)}",
                )
            )
            continue
        out[name] = {**default, **given}
    return out, problems


# ---- definitions in results.json --------------------------------------------------------------


def definition(config: ExperimentConfig, name: str) -> dict[str, Any]:
    """What decides a metric's numbers: its resolved fields (defaults and `description` left
    out) and, for a guardrail, its budget."""
    body: dict[str, Any] = config.metrics[name].model_dump(
        mode="json", exclude_defaults=True, exclude={"description"}
    )
    body["type"] = config.metrics[name].type
    if name in config.guardrails:
        body["guardrail"] = config.guardrails[name].model_dump(mode="json", exclude_defaults=True)
    return body


def definition_sha256(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def metric_definitions(config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """results.json's `metric_definitions`: per metric its definition, hash and catalog origin
    (`catalog_metric` and `catalog_file` null for a metric defined inline)."""
    out = {}
    for name in config.metrics:
        body = definition(config, name)
        source = config.metric_sources.get(name)
        out[name] = {
            "sha256": definition_sha256(body),
            "catalog_metric": source.catalog_metric if source else None,
            "catalog_file": source.catalog_file if source else None,
            "definition": body,
        }
    return out


def definition_changes(
    previous: Mapping[str, Any] | None, results: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Metrics of both readouts whose definition hash differs, with the fields that differ.

    Nothing when the previous readout recorded no definitions (written before they existed).
    """
    if previous is None:
        return []
    before = previous.get("metric_definitions") or {}
    now = results.get("metric_definitions") or {}
    changes = []
    for name, current in now.items():
        old = before.get(name)
        if not old or old.get("sha256") == current["sha256"]:
            continue
        old_body, new_body = old.get("definition") or {}, current["definition"]
        fields = sorted(k for k in {*old_body, *new_body} if old_body.get(k) != new_body.get(k))
        changes.append(
            {
                "metric": name,
                "previous_run_date": str(previous.get("run_date")),
                "previous_sha256": old["sha256"],
                "sha256": current["sha256"],
                "fields": fields,
                "catalog_metric": current.get("catalog_metric"),
                "catalog_file": current.get("catalog_file"),
                "previous_catalog_file": old.get("catalog_file"),
            }
        )
    return changes


def change_sentence(change: Mapping[str, Any]) -> str:
    """One line for the brief: which metric, where it is defined, what differs, since when."""
    if change.get("catalog_file"):
        where = f"catalog metric {change['catalog_metric']} in {change['catalog_file']}"
    else:
        where = "defined in the experiment config"
    fields = ", ".join(change.get("fields") or []) or "its definition"
    return (
        f"{change['metric']} ({where}): {fields} not as in the readout of "
        f"{change['previous_run_date']}, so the two readouts measure it differently"
    )


# ---- usage: which experiments use which catalog metric ----------------------------------------


@dataclass(frozen=True)
class Use:
    experiment: str
    file: str
    local: str
    ref: str
    overrides: Mapping[str, Any]
    guardrail: bool  # the experiment lists the metric among its guardrails


def uses(experiment_paths: Iterable[Path]) -> list[Use]:
    """Every `{ref: ...}` in the configs, read as raw YAML (an invalid config still counts)."""
    found = []
    for path in experiment_paths:
        try:
            data = yaml.load(path.read_text(), Loader=_YAML_LOADER)
        except (OSError, yaml.YAMLError):
            continue
        if not has_references(data):
            continue
        guardrails = data.get("guardrails") if isinstance(data.get("guardrails"), dict) else {}
        for local, raw in data["metrics"].items():
            if isinstance(raw, dict) and "ref" in raw:
                found.append(
                    Use(
                        experiment=str(data.get("key") or path.stem),
                        file=display_path(path),
                        local=str(local),
                        ref=str(raw["ref"]),
                        overrides={k: raw[k] for k in _OVERRIDES if k in raw},
                        guardrail=local in guardrails,
                    )
                )
    return found


def _resolve_for_config(
    data: dict[str, Any], path: str
) -> tuple[dict[str, Any], dict[str, MetricSource], list[ConfigProblem]]:
    if not has_references(data):
        return data, {}, []
    resolution = resolve_references(data, path)
    return resolution.data, resolution.sources, resolution.problems


config_module.reference_resolver = _resolve_for_config
