"""`--shard auto`: SLURM job array and torchrun variables give the shard `--shard I/N` would, and a run
certified shard by shard from them equals the one certified with explicit shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_data import TinyDataset, tiny_smoother

from multiguard.runs import folder as _folder
from multiguard.runs import job as _job
from multiguard.runs.shards import auto_shard, resolve_shard
from multiguard.runs.spec import RunSpec


def array(task: int, low: int, high: int, step: int | None = None, count: bool = True) -> dict[str, str]:
    out = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low), "SLURM_ARRAY_TASK_MAX": str(high)}
    if step is not None:
        out["SLURM_ARRAY_TASK_STEP"] = str(step)
    if count:
        out["SLURM_ARRAY_TASK_COUNT"] = str((high - low) // (step or 1) + 1)
    return out


@pytest.mark.parametrize(("environ", "expected"), [
    (array(0, 0, 3), "0/4"),
    (array(3, 0, 3), "3/4"),
    (array(5, 1, 16), "4/16"),  # --array=1-16
    (array(8, 0, 30, step=2), "4/16"),  # --array=0-30:2
    (array(2, 0, 3, count=False), "2/4"),  # an older SLURM without SLURM_ARRAY_TASK_COUNT
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, "1/3"),
    ({"RANK": "1", "WORLD_SIZE": "2"}, "0/1"),  # torchrun alone: its ranks split the chunks
    ({**array(2, 0, 3), "RANK": "1", "WORLD_SIZE": "2"}, "2/4"),
])
def test_auto_gives_the_shard_of_the_explicit_option(environ, expected):
    assert resolve_shard("auto", environ) == _job.parse_shard(expected)
    assert resolve_shard(expected, environ) == _job.parse_shard(expected)  # I/N is read as before


def test_auto_counts_torchrun_ranks_as_workers_within_a_shard():
    place = auto_shard({**array(2, 0, 3), "RANK": "1", "WORLD_SIZE": "2"})
    assert (place.index, place.count, place.worker, place.workers) == (2, 4, 5, 8)
    assert "task 2 is shard 2 of 4" in place.source and "rank 1 of 2" in place.source
    alone = auto_shard({"RANK": "1", "WORLD_SIZE": "2"})
    assert (alone.worker, alone.workers) == (1, 2) and "torchrun" in alone.source


@pytest.mark.parametrize(("environ", "message"), [
    ({}, r"found no SLURM job array .*give --shard I/N"),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "9",
      "SLURM_ARRAY_TASK_COUNT": "3"}, r"not evenly spaced .*SLURM_ARRAY_TASK_ID=4.*SLURM_ARRAY_TASK_COUNT=3"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "3"}, r"SLURM_ARRAY_TASK_ID='x' is not a whole number"),
    ({"SLURM_ARRAY_TASK_ID": "2"}, r"neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"0 <= RANK < WORLD_SIZE"),
])
def test_auto_refuses_what_it_cannot_place(environ, message):
    with pytest.raises(ValueError, match=rf"^shard: .*{message}"):
        resolve_shard("auto", environ)


def _certify(path: Path, shard: tuple[int, int]) -> _job.RunResult:
    spec = RunSpec(n=100, max_k_prime=2, seed=1, num_inputs=20, chunk_size=3, sigma=0.5, arch="mlp",
                   dataset="digits", split="test")
    return _job.sample_run(path, spec, sampler=tiny_smoother(),
                           dataset=TinyDataset(), shard=shard)


def test_a_job_array_with_auto_writes_the_chunks_and_counts_of_explicit_shards(tmp_path):
    chunks = {}
    for task in (1, 2, 3):  # sbatch --array=1-3: three tasks
        auto = _certify(tmp_path / "auto", resolve_shard("auto", array(task, 1, 3)))
        explicit = _certify(tmp_path / f"explicit-{task}", _job.parse_shard(f"{task - 1}/3"))
        assert auto.chunks_done == explicit.chunks_done
        made = sorted(p.name for p in (tmp_path / f"explicit-{task}" / "chunks").iterdir())
        chunks[task] = made
    assert sorted(p.name for p in (tmp_path / "auto" / "chunks").iterdir()) == sorted(sum(chunks.values(), []))
    assert not set(chunks[1]) & set(chunks[2]) and not set(chunks[2]) & set(chunks[3])
    whole = _certify(tmp_path / "whole", (0, 1))
    assert whole.complete
    np.testing.assert_array_equal(_folder.load_run(tmp_path / "auto").counts,
                                  _folder.load_run(tmp_path / "whole").counts)


# ------------------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_command_line_job_array_with_shard_auto_gives_the_counts_of_one_process(tmp_path_factory, tmp_path):
    import subprocess

    from clitools import CERTIFY_ARGS, assert_same_counts, command, env, reference_run, tiny_checkpoint

    checkpoint = tiny_checkpoint(tmp_path_factory)
    reference = reference_run(tmp_path_factory)
    out = tmp_path / "run"
    for task in (1, 2):  # sbatch --array=1-2, the tasks one after the other
        proc = subprocess.run([*command(), "certify", "--checkpoint", str(checkpoint), *CERTIFY_ARGS, "--device",
                               "cpu", "--out", str(out), "--shard", "auto"], env={**env(), **array(task, 1, 2)},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert f"--shard auto: SLURM job array: task {task} is shard {task - 1} of 2" in proc.stdout
    assert_same_counts(reference, out)


def test_command_line_shard_auto_outside_a_job_array_is_one_line(capsys, monkeypatch, tmp_path):
    from clitools import assert_one_line_error_in_process, run_in_process

    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    result = run_in_process(capsys, "certify", "--checkpoint", str(tmp_path / "model.pt"), "--shard", "auto",
                            "--out", str(tmp_path / "run"))
    assert_one_line_error_in_process(result, "shard: --shard auto found no SLURM job array")
    assert not (tmp_path / "run").exists()
