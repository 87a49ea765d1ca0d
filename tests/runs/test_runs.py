"""RUN_DIR behaviour: atomic chunks, kill -9 and --resume, shards, torchrun, metadata checks, loading."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clitools import (
    CERTIFY_ARGS,
    assert_one_line_error,
    assert_one_line_error_in_process,
    assert_same_counts,
    command,
    env,
    reference_run,
    run,
    run_in_process,
    tiny_checkpoint,
)
from tiny_data import TinyDataset, tiny_smoother

from multiguard.certificates.stop_rule import StopRule
from multiguard.common import files as _files
from multiguard.runs import folder as _folder
from multiguard.runs import job as _job
from multiguard.runs import spec as _spec
from multiguard.runs.spec import RunSpec

# ------------------------------------------------------------------------------ library, small model


PLAN = dict(n=200, max_k_prime=3, seed=1, num_inputs=12, chunk_size=5, sigma=0.5, arch="mlp", dataset="digits",
            split="test")


def _certify(path: Path, **kwargs) -> _job.RunResult:
    plan = dict(PLAN)
    plan.update({name: kwargs.pop(name) for name in list(kwargs) if name in RunSpec.__dataclass_fields__})
    args = dict(sampler=tiny_smoother(), dataset=TinyDataset())
    args.update(kwargs)
    return _job.sample_run(path, RunSpec(**plan), **args)


def test_run_layout_and_load(tmp_path: Path) -> None:
    result = _certify(tmp_path / "run")
    assert result.complete and result.chunks_done == 3
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["chunks", "counts.npz", "inputs.npz", "metadata.json"]
    assert sorted(p.name for p in (run_dir / "chunks").iterdir()) == [f"chunk-00000{i}.npz" for i in range(3)]
    meta = json.loads((run_dir / "metadata.json").read_text())
    for key in ("n", "seed", "max_k_prime", "sigma", "version", "device", "wall_time_s", "num_inputs"):
        assert key in meta
    assert meta["complete"] is True and meta["num_chunks"] == 3
    loaded = _folder.load_run(run_dir)
    assert loaded.counts.shape == (12, 3, 4) and loaded.counts.dtype == np.int64
    assert loaded.labels.dtype == bool and loaded.labels.shape == (12, 4)
    np.testing.assert_array_equal(loaded.indices, _job.select_inputs(30, 12, 1))
    for k_prime in (1, 2, 3):  # every row of k' sums to n * k'
        assert (loaded.counts_for(k_prime).sum(axis=1) == 200 * k_prime).all()
    np.testing.assert_array_equal(loaded.labels, TinyDataset().y[loaded.indices].numpy() > 0.5)
    with pytest.raises(ValueError, match="k_prime"):
        loaded.counts_for(4)


def test_chunks_equal_one_call_of_the_engine(tmp_path: Path) -> None:
    _certify(tmp_path / "run")
    loaded = _folder.load_run(tmp_path / "run")
    data = TinyDataset()
    direct = tiny_smoother().sample_counts(data.x[loaded.indices], 200, seed=1, index=loaded.indices, max_k_prime=3)
    np.testing.assert_array_equal(loaded.counts, direct)


def test_shards_and_resume_in_process_give_the_same_counts(tmp_path: Path) -> None:
    _certify(tmp_path / "one")
    first = _certify(tmp_path / "sharded", shard=(1, 2))
    assert not first.complete and first.chunks_done == 1
    with pytest.raises(ValueError, match="unfinished"):
        _folder.load_run(tmp_path / "sharded")
    partial = _folder.load_run(tmp_path / "sharded", allow_partial=True)
    assert partial.counts.shape[0] == 5
    second = _certify(tmp_path / "sharded", shard=(0, 2))
    assert second.complete and second.chunks_done == 2
    np.testing.assert_array_equal(_folder.load_run(tmp_path / "one").counts,
                                  _folder.load_run(tmp_path / "sharded").counts)
    again = _certify(tmp_path / "one", resume=True)
    assert again.complete and again.chunks_done == 0 and again.chunks_skipped == 3


def test_existing_run_needs_resume_and_matching_settings(tmp_path: Path) -> None:
    _certify(tmp_path / "run")
    with pytest.raises(ValueError, match="--resume"):
        _certify(tmp_path / "run")
    with pytest.raises(ValueError, match="n: the run has 200"):
        _certify(tmp_path / "run", n=300, resume=True)
    with pytest.raises(ValueError, match="sigma"):
        _certify(tmp_path / "run", resume=True, sigma=0.25)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        _certify(tmp_path / "other")


def test_a_torn_chunk_is_redone(tmp_path: Path) -> None:
    _certify(tmp_path / "run")
    reference = _folder.load_run(tmp_path / "run").counts
    (tmp_path / "run" / "counts.npz").unlink()
    (tmp_path / "run" / "chunks" / "chunk-000001.npz").write_bytes(b"garbage")
    stale = tmp_path / "run" / "chunks" / ".chunk-000002.npz.x.tmp"
    stale.write_bytes(b"left by a kill long ago")
    old = time.time() - _folder.STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    in_flight = tmp_path / "run" / "chunks" / ".chunk-000000.npz.y.tmp"
    in_flight.write_bytes(b"another process writing now")
    result = _certify(tmp_path / "run", resume=True)
    assert result.chunks_done == 1 and result.complete
    assert len(result.repairs) == 1 and "chunk-000001.npz is damaged" in result.repairs[0]
    np.testing.assert_array_equal(_folder.load_run(tmp_path / "run").counts, reference)
    assert [p.name for p in (tmp_path / "run" / "chunks").glob(".*")] == [in_flight.name]  # only the old one goes


def test_select_inputs_and_parse_shard() -> None:
    a = _job.select_inputs(1000, 50, 0)
    assert len(a) == 50 and len(set(a.tolist())) == 50 and (np.diff(a) > 0).all()
    np.testing.assert_array_equal(a, _job.select_inputs(1000, 50, 0))
    assert not np.array_equal(a, _job.select_inputs(1000, 50, 1))
    np.testing.assert_array_equal(_job.select_inputs(7, 0, 0), np.arange(7))
    with pytest.raises(ValueError, match="num_inputs"):
        _job.select_inputs(10, 11, 0)
    assert _job.parse_shard("2/4") == (2, 4) and _job.parse_shard(None) == (0, 1)
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            _job.parse_shard(bad)


def test_load_run_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _folder.load_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a MultiGuard run"):
        _folder.load_run(tmp_path)
    assert not _folder.is_run(tmp_path)


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    _files.atomic_write_json(tmp_path / "a.json", {"x": 1})
    _files.atomic_write_bytes(tmp_path / "a.json", b'{"x": 2}')
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}


# ------------------------------------------------------------------------------ the command line


@pytest.mark.slow
def test_kill_9_then_resume_gives_identical_counts(tmp_path_factory, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path_factory)
    reference = reference_run(tmp_path_factory)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*command(), "certify", "--checkpoint", str(checkpoint), *CERTIFY_ARGS, "--device", "cpu", "--quiet",
         "--out", str(out)],
        env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not list((out / "chunks").glob("chunk-*.npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    done = len(list((out / "chunks").glob("chunk-*.npz")))
    assert 1 <= done < 10, f"the kill should land mid-run, found {done} of 10 chunks"
    assert not (out / "counts.npz").exists()
    again = run("certify", "--checkpoint", str(checkpoint), *CERTIFY_ARGS, "--device", "cpu", "--out", str(out),
                "--resume")
    assert "found on disk" in again.stdout
    assert_same_counts(reference, out)
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.slow
def test_resume_refuses_other_settings_naming_the_field(tmp_path_factory, capsys) -> None:
    checkpoint = tiny_checkpoint(tmp_path_factory)
    reference = reference_run(tmp_path_factory)
    other = [a if a != "500" else "400" for a in CERTIFY_ARGS]  # --num-samples 400
    proc = run("certify", "--checkpoint", str(checkpoint), *other, "--device", "cpu", "--out", str(reference),
               "--resume", check=False)
    assert_one_line_error(proc, "n: the run has 500")
    result = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), *CERTIFY_ARGS, "--device", "cpu",
                            "--out", str(reference))
    assert_one_line_error_in_process(result, "--resume")


@pytest.mark.slow
def test_two_shards_at_once_give_identical_counts(tmp_path_factory, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path_factory)
    reference = reference_run(tmp_path_factory)
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [*command(), "certify", "--checkpoint", str(checkpoint), *CERTIFY_ARGS, "--device", "cpu", "--quiet",
             "--out", str(out), "--shard", f"{i}/2"],
            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    assert_same_counts(reference, out)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["complete"] and meta["num_shards"] == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_give_identical_counts(tmp_path_factory, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path_factory)
    reference = reference_run(tmp_path_factory)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         "-m", "multiguard", "certify", "--checkpoint", str(checkpoint), *CERTIFY_ARGS, "--device", "cpu",
         "--out", str(out)],
        env=env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0 of 2" in proc.stdout and "run complete" in proc.stdout
    assert_same_counts(reference, out)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["complete"] and meta["world_size"] == 2


def test_the_run_spec_declares_the_identity_and_reads_old_metadata() -> None:
    # The identity fields of runs written before settings became values, in their order, then those added since
    # (a thresholded base classifier's thresholds; legacy None).
    assert _spec.IDENTITY_FIELDS == (
        "format_version", "checkpoint_sha256", "denoiser_sha256", "arch", "dataset", "dataset_options", "split",
        "dataset_size", "image_size", "num_classes", "sigma", "clamp", "n", "sample_sizes", "seed", "max_k_prime",
        "num_inputs", "chunk_size", "precision", "channels_last", "compile", "stop_rule", "thresholds",
        "model_file_sha256",  # added since (issue 22): absent from older runs, read as its legacy value None
        "noise", "shared_noise",  # added since (issue 28): older runs read as float, unshared
        "dataset_version",  # added since (issue 28: multidigits became 8-bit): older runs read as None
    )
    old = {"n": 200, "max_k_prime": 3, "seed": 1, "num_inputs": 12, "chunk_size": 5, "sigma": 0.5,
           "sample_sizes": [100, 200], "format_version": 1}  # written before sampling modes were recorded
    spec = RunSpec.from_dict(old)
    assert (spec.precision, spec.channels_last, spec.compile) == ("fp32", False, False)
    assert (spec.noise, spec.shared_noise) == ("float", False)
    assert spec.identity()["sample_sizes"] == [100, 200] and spec.stop_rule is None
    assert spec.digest() == RunSpec.from_dict({**old, "precision": "fp32"}).digest()
    assert spec.digest() != RunSpec.from_dict({**old, "sigma": 0.25}).digest()
    rule = {"radius": 0.25, "k": 2, "k_prime": 1, "alpha": 0.001}
    sequential = RunSpec(n=1000, max_k_prime=2, stop_rule=rule)
    # a dict reads as old metadata: the rule before schedules, spending and the margin (their legacy values)
    assert sequential.stop_rule == StopRule(0.25, 2, 1, 0.001, "remaining", "1-2-5", None) and sequential.sequential
    assert sequential.metadata()["stop_rule"] == {**rule, "futility": "remaining", "schedule": "1-2-5",
                                                  "spending": None, "margin": 0.2, "bounds": "union"}
    assert StopRule(0.25, 2, 1, 0.001).to_dict() == {**rule, "futility": "margin", "schedule": "fine",
                                                     "spending": 0.75, "margin": 0.2,
                                                     "bounds": "union"}  # the current default


@pytest.mark.parametrize(("changes", "message"), [
    ({"n": 0}, "n must be"), ({"chunk_size": 0}, "chunk_size"), ({"batch_size": 0}, "batch_size"),
    ({"max_k_prime": 0}, "max_k_prime"), ({"stop_rule": {"radius": -1, "k": 1, "k_prime": 1, "alpha": 0.01}},
                                          "stop_at_radius"),
    ({"stop_rule": {"radius": 0.5, "k": 1, "k_prime": 1, "alpha": 2}}, "alpha"),
    ({"stop_rule": {"radius": 0.5, "k": 1, "k_prime": 4, "alpha": 0.01}}, "k_prime must be <= max_k_prime"),
    ({"stop_rule": {"radius": 0.5, "k": 1, "k_prime": 2, "alpha": 0.01}}, "the sampler.s k_prime"),
    ({"stop_rule": {"radius": 0.5, "k": 1}}, "missing alpha, k_prime"),
    ({"stop_rule": {"radius": 0.5, "k": 1, "k_prime": 1, "alpha": 0.01, "futility": "never"}}, "futility"),
])
def test_a_bad_run_spec_is_refused_naming_the_setting_before_any_file(tmp_path: Path, changes: dict,
                                                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _certify(tmp_path / "run", **changes)
    assert not (tmp_path / "run").exists()
