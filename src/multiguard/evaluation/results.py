"""Results as data: ``results.json``, the certified curves of a report in a documented, versioned schema.

A report's curves are also written as ``results.json`` so that reproductions can be shared, checked and put
side by side (:func:`compare_results`, ``multiguard report --compare A/results.json B/results.json``). The
schema (``docs/results.md`` describes every field) is, in short::

    {"schema": "multiguard-results", "schema_version": 1, "multiguard_version": "0.1.0", "title": "...",
     "runs": [{"id": "run", "dataset": "voc2007", "split": "test", "inputs": {"count": 500, "seed": 0,
               "indices_sha256": "..."}, "model": {"arch": "resnet101", "checkpoint_sha256": "...",
               "train_sigma": 0.5}, "sigma": 0.5, "n": 1000, "sampling": {"mode": "fp32",
                  "noise": "float, Gaussian in floating point (...)", "sequential": null},
               "denoiser": null, "cost": {"samples": 500000, "wall_time_s": 812.4, "device": "cuda",
               "devices": ["NVIDIA H200"], "world_size": 1, "num_shards": 1}, "software": {...}}],
     "records": [{"run": "run", "method": "multiguard", "k": 3, "k_prime": 1, "alpha": 0.001, "radius": 0.5,
                  "certified_precision": 0.61, "certified_recall": 0.47, "certified_f1": 0.53,
                  "num_inputs": 500}, ...]}

One record per (run, method, k, k', alpha, radius); a record's run identity (dataset, split, inputs, model
hash, sigma, n, sampling mode, denoiser) and sampling cost are its ``runs`` entry (named by ``run``), held
once. Metrics are fractions in [0, 1]. The document holds no time stamp: the same runs and settings give the
same bytes. :func:`validate_results` checks a document against the schema (one ValueError naming the field).
This module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multiguard.common.files import atomic_write_bytes

__all__ = [
    "RESULTS_FILE",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "compare_results",
    "read_results",
    "results_bytes",
    "results_document",
    "run_cost",
    "run_identity",
    "validate_results",
    "write_results",
]

SCHEMA_NAME = "multiguard-results"
SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
METRICS = ("precision", "recall", "f1")
COMPARE_RADII = (0.0, 0.25, 0.5, 1.0)  # the columns of a comparison, where every file has them
DIGITS = 10  # metrics and radii are rounded to this many decimals (far below any meaningful difference)


# --------------------------------------------------------------------------------------- identity


def _indices_sha256(indices: Any) -> str | None:
    if indices is None:
        return None
    array = np.ascontiguousarray(np.asarray(indices, dtype=np.int64))
    return hashlib.sha256(array.tobytes()).hexdigest()


def _sampling_mode(metadata: dict[str, Any]) -> str:
    from multiguard.sampling.modes import describe_mode

    return describe_mode(metadata)


def _noise(metadata: dict[str, Any]) -> str:
    from multiguard.runs.folder import run_noise

    return run_noise(metadata)


def run_identity(run: Any, run_id: str) -> dict[str, Any]:
    """What a run's numbers are the numbers of: ``{"id", "dataset", "split", "dataset_options", "inputs",
    "model", "sigma", "n", "sampling", "denoiser"}`` from a :class:`multiguard.runs.folder.Run` (its metadata,
    its input indices)."""
    meta = run.metadata
    rule = meta.get("stop_rule")
    denoiser = None
    if meta.get("denoiser"):
        settings = meta.get("denoiser_settings") or {}
        denoiser = {"path": str(meta["denoiser"]), "sha256": meta.get("denoiser_sha256"),
                    "arch": settings.get("arch"), "objective": settings.get("objective")}
    return {
        "id": run_id,
        "dataset": meta.get("dataset"),
        "split": meta.get("split"),
        "dataset_options": meta.get("dataset_options") or {},
        "image_size": meta.get("image_size"),
        "inputs": {"count": int(run.counts.shape[0]), "seed": meta.get("seed"),
                   "dataset_size": meta.get("dataset_size"), "indices_sha256": _indices_sha256(run.indices)},
        "model": {"arch": meta.get("arch"), "checkpoint_sha256": meta.get("checkpoint_sha256"),
                  "train_sigma": meta.get("train_sigma")},
        "sigma": float(meta["sigma"]),
        "n": int(meta["n"]),
        "max_k_prime": int(run.counts.shape[1]),
        "sampling": {"mode": _sampling_mode(meta), "noise": _noise(meta), "sequential": dict(rule) if rule else None},
        "denoiser": denoiser,
        "thresholds": meta.get("thresholds") or None,  # {"values", "scale"} of a thresholded base classifier
    }


def run_cost(run: Any) -> dict[str, Any]:
    """What sampling a run cost: ``{"samples", "wall_time_s", "device", "devices", "world_size",
    "num_shards"}``; ``samples`` is the noisy copies behind the counts (N x n, or a sequential run's sum),
    ``wall_time_s`` the run's recorded sampling time (``None`` where it was not recorded, e.g. shards)."""
    meta = run.metadata
    samples = run.samples
    total = int(np.sum(samples)) if samples is not None else int(run.counts.shape[0]) * int(meta["n"])
    wall = meta.get("wall_time_s")
    return {
        "samples": total,
        "wall_time_s": None if wall is None else float(wall),
        "device": meta.get("device"),
        "devices": list(meta.get("devices") or []),
        "world_size": meta.get("world_size"),
        "num_shards": meta.get("num_shards"),
    }


def _software(meta: dict[str, Any]) -> dict[str, Any]:
    return {"multiguard": meta.get("version"), "torch": meta.get("torch_version")}


def _round(value: float) -> float:
    return round(float(value), DIGITS)


def _run_ids(runs: Sequence[Any], names: Sequence[str]) -> list[str]:
    """A distinct id per run: its name, or ``NAME@n=N`` where one run is read at several sample sizes
    (``report --n``), which gives several runs one name."""
    if len(set(names)) == len(names):
        return [str(name) for name in names]
    ids = [f"{name}@n={int(run.metadata['n'])}" for run, name in zip(runs, names, strict=True)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"names must tell the runs apart, got {list(names)}")
    return ids


def results_document(curves: Sequence[Any], runs: Sequence[Any], names: Sequence[str],
                     title: str = "Certified robustness") -> dict[str, Any]:
    """The ``results.json`` document of a report: ``runs`` (``runs[i]`` is called ``names[i]`` by the curves;
    where one run is read at several n, its ids become ``NAME@n=N``) and one record per curve and radius of
    the certified curves (curves of method ``attack``, empirical, are not results of a certificate and are
    left out of ``records``); with attack curves, ``attacked``: one record per attack and radius with its
    ``attacked_*`` metrics (empirical, an upper bound) and the ``certified_*`` ones of the same inputs (a lower
    bound; the gap between them is what neither has settled) and its ``violations``; a thresholded attack's
    records (per-label curves of method ``attack``) also carry its ``q``, with k and k' 0."""
    from multiguard import __version__

    if len(names) != len(runs):
        raise ValueError(f"names must give one name per run ({len(runs)}), got {len(names)}")
    ids = _run_ids(runs, names)
    by_curve = {(str(name), int(run.metadata["n"])): run_id for run, name, run_id in zip(runs, names, ids, strict=True)}
    records = []
    for curve in curves:
        if curve.method == "attack":
            continue
        run_id = by_curve.get((curve.run, int(curve.n)))
        if run_id is None:
            raise ValueError(f"curves: curve of run {curve.run!r} (n = {curve.n}) has no run among "
                             f"{sorted({str(name) for name in names})}")
        for j, radius in enumerate(np.asarray(curve.radius, dtype=np.float64)):
            records.append({
                "run": run_id, "method": curve.method, "k": int(curve.k), "k_prime": int(curve.k_prime),
                "q": None if getattr(curve, "q", None) is None else float(curve.q),
                "alpha": float(curve.alpha), "radius": _round(radius),
                "certified_precision": _round(curve.precision[j]), "certified_recall": _round(curve.recall[j]),
                "certified_f1": _round(curve.f1[j]), "num_inputs": int(curve.num_inputs),
            })
    document = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "multiguard_version": __version__,
        "title": title,
        "runs": [{**run_identity(run, run_id), "cost": run_cost(run), "software": _software(run.metadata)}
                 for run, run_id in zip(runs, ids, strict=True)],
        "records": records,
    }
    attacked = [record for curve in curves if curve.method == "attack" for record in _attacked_records(curve)]
    if attacked:
        document["attacked"] = attacked
    return document


def _attacked_records(curve: Any) -> list[dict[str, Any]]:
    """One ``attacked`` record per radius of an attack's curve: the attacked (empirical, an upper bound) and,
    where the attack certified its inputs, the certified (a lower bound) metrics of the same inputs."""
    certified = getattr(curve, "certified", None)
    violations = getattr(curve, "violations", None)
    out = []
    for j, radius in enumerate(np.asarray(curve.radius, dtype=np.float64)):
        record = {"attack": str(curve.run), "k": int(curve.k), "k_prime": int(curve.k_prime),
                  "alpha": float(curve.alpha), "radius": _round(radius), "num_inputs": int(curve.num_inputs),
                  "violations": None if violations is None else int(violations[j])}
        if getattr(curve, "q", None) is not None:  # a thresholded attack: its cut; k and k' are 0
            record["q"] = float(curve.q)
        for metric in ("precision", "recall", "f1"):
            record[f"attacked_{metric}"] = _round(curve.metric(metric)[j])
            record[f"certified_{metric}"] = None if certified is None else _round(certified[metric][j])
        out.append(record)
    return out


def results_bytes(document: dict[str, Any]) -> bytes:
    """``document`` as the bytes of ``results.json`` (sorted keys, so equal documents give equal files)."""
    return (json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def write_results(path: str | os.PathLike[str], curves: Sequence[Any], runs: Sequence[Any], names: Sequence[str],
                  title: str = "Certified robustness") -> dict[str, Any]:
    """Write :func:`results_document` to ``path`` atomically (validated first) and return it."""
    document = results_document(curves, runs, names, title=title)
    validate_results(document)
    atomic_write_bytes(path, results_bytes(document))
    return document


# ------------------------------------------------------------------------------------------ schema

_ANY = object()

# field -> (types, required); the nested objects have their own tables
_RUN_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": ((str,), True), "dataset": ((str,), True), "split": ((str, type(None)), True),
    "dataset_options": ((dict,), True), "image_size": ((int, type(None)), False), "inputs": ((dict,), True),
    "model": ((dict,), True), "sigma": ((float, int), True), "n": ((int,), True), "max_k_prime": ((int,), False),
    "sampling": ((dict,), True), "denoiser": ((dict, type(None)), True), "cost": ((dict,), True),
    "software": ((dict,), False), "thresholds": ((dict, type(None)), False),
}
_INPUT_FIELDS = {"count": ((int,), True), "seed": ((int, type(None)), True),
                 "dataset_size": ((int, type(None)), False), "indices_sha256": ((str, type(None)), True)}
_MODEL_FIELDS = {"arch": ((str, type(None)), True), "checkpoint_sha256": ((str, type(None)), True),
                 "train_sigma": ((float, int, type(None)), False)}
_SAMPLING_FIELDS = {"mode": ((str,), True), "noise": ((str,), False), "sequential": ((dict, type(None)), True)}
_COST_FIELDS = {"samples": ((int,), True), "wall_time_s": ((float, int, type(None)), True),
                "device": ((str, type(None)), True), "devices": ((list,), False),
                "world_size": ((int, type(None)), False), "num_shards": ((int, type(None)), False)}
_RECORD_FIELDS = {
    "run": ((str,), True), "method": ((str,), True), "k": ((int,), True), "k_prime": ((int,), True),
    "q": ((float, type(None)), False), "alpha": ((float,), True), "radius": ((float, int), True),
    "certified_precision": ((float, int), True),
    "certified_recall": ((float, int), True), "certified_f1": ((float, int), True), "num_inputs": ((int,), True),
}


def _check_fields(obj: Any, fields: dict[str, tuple[tuple[type, ...], bool]], where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"results: {where}: must be an object")
    for name, (types, required) in fields.items():
        if name not in obj:
            if required:
                raise ValueError(f"results: {where}.{name}: missing")
            continue
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, types):
            kinds = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"results: {where}.{name}: must be {kinds}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"results: {where}.{name}: must be finite, got {value!r}")


def _check_attacked(attacked: Any) -> None:
    """The optional ``attacked`` list: each record a radius >= 0 and metrics in [0, 1] (certified ones may be
    null)."""
    if not isinstance(attacked, list):
        raise ValueError("results: attacked: must be a list")
    for i, record in enumerate(attacked):
        if not isinstance(record, dict) or not isinstance(record.get("radius"), (int, float)) or record["radius"] < 0:
            raise ValueError(f"results: attacked[{i}]: must be a record with a radius >= 0")
        for metric in ("precision", "recall", "f1"):
            values = [record.get(f"attacked_{metric}"), record.get(f"certified_{metric}")]
            if not isinstance(values[0], (int, float)) or not all(v is None or 0.0 <= v <= 1.0 for v in values):
                raise ValueError(f"results: attacked[{i}].{metric}: must be numbers in [0, 1]")


def validate_results(document: Any) -> None:
    """Check a ``results.json`` document against schema version 1; raises ValueError naming the field.

    Checked: the schema name and version; every run's fields and types (inputs, model, sampling, cost);
    every record's fields and types, k >= 1, k' >= 1, alpha in (0, 1), radius >= 0, metrics in [0, 1],
    that its run is one of ``runs``, and that no (run, method, k, k', alpha, radius) appears twice.
    """
    if not isinstance(document, dict):
        raise ValueError("results: the document must be a JSON object")
    if document.get("schema") != SCHEMA_NAME:
        raise ValueError(f"results: schema: must be {SCHEMA_NAME!r}, got {document.get('schema')!r}")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"results: schema_version: this multiguard reads version {SCHEMA_VERSION}, got "
                         f"{document.get('schema_version')!r}")
    for key, kind in (("runs", list), ("records", list), ("multiguard_version", str), ("title", str)):
        if not isinstance(document.get(key), kind):
            raise ValueError(f"results: {key}: must be a {kind.__name__}")
    ids = set()
    for i, run in enumerate(document["runs"]):
        where = f"runs[{i}]"
        _check_fields(run, _RUN_FIELDS, where)
        _check_fields(run["inputs"], _INPUT_FIELDS, f"{where}.inputs")
        _check_fields(run["model"], _MODEL_FIELDS, f"{where}.model")
        _check_fields(run["sampling"], _SAMPLING_FIELDS, f"{where}.sampling")
        _check_fields(run["cost"], _COST_FIELDS, f"{where}.cost")
        if run["sigma"] <= 0 or run["n"] < 1:
            raise ValueError(f"results: {where}: sigma must be > 0 and n >= 1, got {run['sigma']}, {run['n']}")
        if run["id"] in ids:
            raise ValueError(f"results: {where}.id: {run['id']!r} appears twice")
        ids.add(run["id"])
    _check_attacked(document.get("attacked", []))
    seen = set()
    for i, record in enumerate(document["records"]):
        where = f"records[{i}]"
        _check_fields(record, _RECORD_FIELDS, where)
        if record["run"] not in ids:
            raise ValueError(f"results: {where}.run: {record['run']!r} is not one of the runs {sorted(ids)}")
        q = record.get("q")
        if q is None and (record["k"] < 1 or record["k_prime"] < 1):
            raise ValueError(f"results: {where}: k and k_prime must be >= 1 (top-k records)")
        if q is not None and (record["k"] != 0 or record["k_prime"] != 0 or not 0 < q < 1):
            raise ValueError(f"results: {where}: a per-label record (q = {q}) has k = k_prime = 0 and q in (0, 1)")
        if not 0 < record["alpha"] < 1:
            raise ValueError(f"results: {where}.alpha: must be in (0, 1), got {record['alpha']}")
        if record["radius"] < 0:
            raise ValueError(f"results: {where}.radius: must be >= 0, got {record['radius']}")
        for metric in METRICS:
            value = record[f"certified_{metric}"]
            if not 0 <= value <= 1:
                raise ValueError(f"results: {where}.certified_{metric}: must be in [0, 1], got {value}")
        key = (record["run"], record["method"], record["k"], record["k_prime"], q, record["alpha"], record["radius"])
        if key in seen:
            raise ValueError(f"results: {where}: (run, method, k, k', q, alpha, radius) {key} appears twice")
        seen.add(key)


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``results.json`` (a file, or a report folder holding one), validated; ValueError naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"compare: {path} not found (a results.json written by `multiguard report`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"compare: cannot read {path} as JSON: {exc}") from None
    try:
        validate_results(document)
    except ValueError as exc:
        raise ValueError(f"compare: {path}: {str(exc).removeprefix('results: ')}") from None
    return document


# ----------------------------------------------------------------------------------------- compare

_IDENTITY_SHOWN = (("dataset", ("dataset",)), ("split", ("split",)), ("inputs", ("inputs", "count")),
                   ("inputs hash", ("inputs", "indices_sha256")), ("arch", ("model", "arch")),
                   ("model hash", ("model", "checkpoint_sha256")), ("σ", ("sigma",)), ("n", ("n",)),
                   ("mode", ("sampling", "mode")), ("noise", ("sampling", "noise")),
                   ("denoiser", ("denoiser", "sha256")), ("thresholds", ("thresholds",)))

STRICT_FIELDS = ("dataset", "split", "inputs", "inputs hash", "σ", "n", "noise", "thresholds")
"""The fields of :data:`_IDENTITY_SHOWN` in which ``report --compare --strict`` refuses a difference: what the
numbers are measured on (the data, the noise, the base classifier's thresholds). The model, the sampling mode and
the denoiser are what a comparison usually compares, so they may differ."""


def _get(obj: Any, keys: Iterable[str]) -> Any:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _labels(paths: Sequence[Path]) -> list[str]:
    """A short distinct label per results file: its folder's name (the report folder), else more of its path."""
    for depth in range(1, 6):
        labels = ["/".join(p.resolve().parent.parts[-depth:]) if p.name == RESULTS_FILE else
                  "/".join(p.resolve().with_suffix("").parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and "values" in value:  # thresholds: the values (a hash of a long list) and scale
        values = [float(v) for v in value["values"]]
        shown = ", ".join(f"{v:g}" for v in values) if len(values) <= 3 else \
            f"{len(values)} per label, sha256 {hashlib.sha256(json.dumps(values).encode()).hexdigest()[:8]}"
        return f"{shown} ({value.get('scale', 'probability')})"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return f"{value:g}" if isinstance(value, float) else str(value)


def compare_results(
    paths: Sequence[str | os.PathLike[str]],
    *,
    metrics: Sequence[str] = ("f1",),
    radii: Sequence[float] | None = None,
) -> str:
    """Several ``results.json`` files in one Markdown text: a table of the runs' identities and costs, then per
    metric a table with one row per (file, run, method, k, k', alpha) and one column per radius.

    ``radii``: the columns (``None``: those of 0, 0.25, 0.5, 1 that every file has, else the radii the files
    share, at most six); a value a row lacks is ``-``. Metrics are shown in percent. Raises ValueError naming
    the file that is missing, unreadable or not valid.
    """
    if not paths:
        raise ValueError("compare: give at least one results.json")
    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"metrics must be among {', '.join(METRICS)}, got {metric!r}")
    paths = [Path(p) / RESULTS_FILE if Path(p).is_dir() else Path(p) for p in paths]
    documents = [read_results(p) for p in paths]
    labels = _labels(paths)
    if radii is None:
        shared = set.intersection(*({r["radius"] for r in d["records"]} for d in documents))
        chosen = [r for r in COMPARE_RADII if r in shared] or sorted(shared)[:6]
    else:
        chosen = [_round(r) for r in radii]
    out = ["## Runs", ""]
    head = ["results", "run", *(name for name, _ in _IDENTITY_SHOWN), "samples", "wall time (s)", "device"]
    rows = []
    for label, document in zip(labels, documents, strict=True):
        for run in document["runs"]:
            cost = run["cost"]
            rows.append([label, run["id"], *(_shown(_get(run, keys)) for _, keys in _IDENTITY_SHOWN),
                         str(cost["samples"]), _shown(cost["wall_time_s"]),
                         ", ".join(cost.get("devices") or []) or _shown(cost["device"])])
    out += _markdown(head, rows)
    differing = differing_fields(documents)
    if len(rows) > 1:
        out += ["", "The runs differ in: " + (", ".join(differing) if differing else "nothing of the above") + "."]
    for metric in metrics:
        out += ["", f"## Certified {metric} (%) at radius R", ""]
        head = ["results", "run", "method", "k", "k'", "α", *(f"R = {r:g}" for r in chosen)]
        table: dict[tuple, dict[float, float]] = {}
        for label, document in zip(labels, documents, strict=True):
            for record in document["records"]:
                q = record.get("q")
                method = record["method"] if q is None else f"{record['method']} (q = {q:g})"
                k, k_prime = (record["k"], record["k_prime"]) if q is None else ("-", "-")
                key = (label, record["run"], method, k, k_prime, record["alpha"])
                table.setdefault(key, {})[record["radius"]] = record[f"certified_{metric}"]
        rows = [[*map(str, key[:5]), f"{key[5]:g}", *(f"{100 * values[r]:.1f}" if r in values else "-"
                                                       for r in chosen)] for key, values in table.items()]
        out += _markdown(head, rows)
    return "\n".join(out) + "\n"


def differing_fields(documents: Sequence[dict[str, Any]]) -> list[str]:
    """The names (those of the compare table's columns: ``σ``, ``thresholds``, ...) of the identity fields in which
    the runs of these ``results.json`` documents differ; empty when every run has the same value of each."""
    runs = [run for document in documents for run in document["runs"]]
    return [name for name, keys in _IDENTITY_SHOWN
            if len({json.dumps(_get(run, keys), sort_keys=True) for run in runs}) > 1]


def _markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(row) for row in rows)]
