"""From a smoothed classifier in memory and a dataset to a RUN_DIR, in one call (:func:`certify_dataset`).

The command line goes from a checkpoint file (:mod:`multiguard.runs.certify_step`); a user with a model in
a notebook goes through here. Both write the same RUN_DIR (:mod:`multiguard.runs.folder`), which
:func:`multiguard.evaluation.report.make_report` turns into curves, tables and plots. Torch-free itself: the
smoothed classifier brings torch.
"""

from __future__ import annotations

import os
from typing import Any

from multiguard.certificates.stop_rule import StopRule
from multiguard.runs.job import RunResult, sample_run
from multiguard.runs.spec import RunSpec

__all__ = ["certify_dataset"]


def certify_dataset(
    smoothed: Any,
    dataset: Any,
    out: str | os.PathLike[str],
    *,
    n: int = 1000,
    num_inputs: int | None = 500,
    seed: int = 0,
    max_k_prime: int | None = None,
    stop_rule: StopRule | None = None,
    chunk_size: int = 10,
    batch_size: int = 1000,
    dataset_name: str | None = None,
    resume: bool = False,
) -> RunResult:
    """Sample a RUN_DIR at ``out`` for ``num_inputs`` inputs of ``dataset`` (``None`` or 0: all of them, drawn
    from ``seed``), ``n`` noisy samples each, with the smoothed classifier ``smoothed``
    (:class:`multiguard.MultiGuard`): counts for every k' <= ``max_k_prime`` (default: the classifier's k').

    The run records what the smoothed classifier knows of itself (sigma, classes, clamp, sampling mode,
    thresholds); ``dataset_name`` (default: the dataset's ``name`` attribute, if any) names the data in the
    report. With ``stop_rule`` (:class:`multiguard.certificates.stop_rule.StopRule`) each input is sampled
    look by look, up to ``n``, until its certificate at the rule's radius is settled. ``resume=True``
    continues a run killed midway (the settings must agree). Returns the :class:`multiguard.runs.job.RunResult`;
    ``multiguard.load_run(out)`` reads the run and ``multiguard.make_report([out], ...)`` reports it.
    """
    k_prime = int(getattr(smoothed, "k_prime", 1))
    mode = getattr(smoothed, "mode", None)
    thresholds = getattr(smoothed, "thresholds", None)
    spec = RunSpec(
        n=n, num_inputs=num_inputs, seed=seed, chunk_size=chunk_size, batch_size=batch_size,
        max_k_prime=max(k_prime, stop_rule.k_prime if stop_rule is not None else 1) if max_k_prime is None
        else max_k_prime,
        stop_rule=stop_rule, sigma=getattr(smoothed, "sigma", None), num_classes=getattr(smoothed, "num_classes", None),
        clamp=list(smoothed.clamp) if getattr(smoothed, "clamp", None) is not None else None,
        dataset=dataset_name if dataset_name is not None else getattr(dataset, "name", None),
        thresholds=None if thresholds is None else thresholds.identity(),
        **({} if mode is None else mode.as_metadata()),
        record={"source": "in memory (multiguard.certify_dataset)"},
    )
    return sample_run(out, spec, sampler=smoothed, dataset=dataset, resume=resume)
