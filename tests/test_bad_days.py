"""Bad days (issue 10): careless users and unlucky machines never cost a model, a run or a clean error.

One test per finding: damaged run files (resume repairs them, a report names them), hand-edited metadata,
limits, temporary files of other processes, and a fuzz test of random and truncated bytes in every file
MultiGuard reads back. Runs here are sampled in-process from a small MLP (milliseconds); the command line
runs as a user runs it (a subprocess) where that is what is tested, else through ``main()`` in-process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import (
    CERTIFY_ARGS,
    assert_one_line_error,
    assert_one_line_error_in_process,
    assert_same_counts,
    reference_run,
    run,
    run_in_process,
    tiny_checkpoint,
)

from multiguard import MultiGuard, runs
from multiguard.validation import DamagedFileError

# ------------------------------------------------------------------------------ a small real run


class _Digits:
    """30 inputs of 6 features with 4 labels: a small in-memory dataset (real data, not a mock)."""

    class_names = ["a", "b", "c", "d"]

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.rand(30, 6, generator=generator)
        self.y = (torch.rand(30, 4, generator=generator) > 0.5).float()

    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _smoother() -> MultiGuard:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return MultiGuard(model, num_classes=4, sigma=0.5, device="cpu")


RUN_ARGS = dict(n=60, max_k_prime=2, seed=1, num_inputs=12, chunk_size=5)
RUN_META = {"sigma": 0.5, "arch": "mlp", "dataset": "digits", "split": "test"}


def _certify(path: Path, **kwargs) -> runs.RunResult:
    args = dict(sampler=_smoother(), dataset=_Digits(), metadata=dict(RUN_META), **RUN_ARGS)
    args.update(kwargs)
    return runs.sample_run(path, **args)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A complete run sampled once (3 chunks of 5, 5, 2 inputs)."""
    path = tmp_path_factory.mktemp("bad-days") / "reference"
    assert _certify(path).complete
    return path


def _copy(reference: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(reference, tmp_path / name))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _same_run(a: Path, b: Path) -> None:
    first, second = runs.load_run(a), runs.load_run(b)
    np.testing.assert_array_equal(first.counts, second.counts)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.indices, second.indices)


def _one_line(error: BaseException, *needles: str) -> None:
    text = str(error)
    assert "\n" not in text and text.strip() == text, text
    for needle in needles:
        assert needle in text, (needle, text)


# ------------------------------------------------------------------ finding 2: damaged run files


def test_a_truncated_chunk_is_named_by_load_run_and_redone_by_resume(reference: Path, tmp_path: Path) -> None:
    path = _copy(reference, tmp_path)
    (path / "counts.npz").unlink()  # killed before the merge: the report merges the chunks
    chunk = path / "chunks" / "chunk-000001.npz"
    _truncate(chunk)
    with pytest.raises(DamagedFileError) as caught:
        runs.load_run(path)
    _one_line(caught.value, str(chunk), "--resume")
    result = _certify(path, resume=True)
    assert result.complete and result.chunks_done == 1 and result.chunks_skipped == 2
    assert result.repairs == [f"{chunk} is damaged (cannot be read: File is not a zip file): sampling it again"]
    _same_run(reference, path)


@pytest.mark.parametrize("damage", ["wrong inputs", "wrong shape", "count above n", "negative count",
                                    "not an npz", "labels not 0/1", "no counts"])
def test_resume_checks_every_chunk_it_finds(reference: Path, tmp_path: Path, damage: str) -> None:
    path = _copy(reference, tmp_path)
    chunk = path / "chunks" / "chunk-000000.npz"
    with np.load(chunk) as stored:
        arrays = {key: stored[key] for key in stored.files}
    if damage == "wrong inputs":
        arrays["indices"] = arrays["indices"] + 1
    elif damage == "wrong shape":
        arrays["counts"] = arrays["counts"][:, :, :3]
    elif damage == "count above n":
        arrays["counts"][0, 0, 0] = RUN_ARGS["n"] + 1
    elif damage == "negative count":
        arrays["counts"][1, 1, 1] = -1
    elif damage == "labels not 0/1":
        arrays["labels"] = arrays["labels"].astype(np.int64) * 2
    elif damage == "no counts":
        del arrays["counts"]
    if damage == "not an npz":
        np.save(chunk.with_suffix(""), arrays["counts"])  # a .npy under the chunk's name
        chunk.with_suffix(".npy").rename(chunk)
    else:
        with open(chunk, "wb") as handle:
            np.savez(handle, **arrays)
    (path / "counts.npz").unlink()
    with pytest.raises(DamagedFileError) as caught:
        runs.load_run(path)
    _one_line(caught.value, str(chunk), "--resume")
    result = _certify(path, resume=True)
    assert result.chunks_done == 1 and len(result.repairs) == 1 and str(chunk) in result.repairs[0]
    _same_run(reference, path)


def test_a_truncated_counts_file_is_named_and_merged_again_by_resume(reference: Path, tmp_path: Path) -> None:
    path = _copy(reference, tmp_path)
    _truncate(path / "counts.npz")
    with pytest.raises(DamagedFileError) as caught:
        runs.load_run(path)
    _one_line(caught.value, str(path / "counts.npz"), "--resume")
    result = _certify(path, resume=True)
    assert result.complete and result.chunks_done == 0
    assert result.repairs == [f"{path / 'counts.npz'} is damaged (cannot be read: File is not a zip file): "
                              "merging the chunks into it again"]
    _same_run(reference, path)


def test_damaged_metadata_and_inputs_are_rewritten_by_resume_only_with_the_same_settings(
    reference: Path, tmp_path: Path
) -> None:
    path = _copy(reference, tmp_path)
    (path / "metadata.json").write_text('{"n": 60, "sig')
    _truncate(path / "inputs.npz")
    with pytest.raises(DamagedFileError) as caught:
        runs.load_run(path)
    _one_line(caught.value, str(path / "metadata.json"), "--resume")
    with pytest.raises(ValueError) as refused:  # other arguments than the counts were sampled with
        _certify(path, resume=True, n=70)
    _one_line(refused.value, "n: the arguments give 70, the counts were sampled with 60", "metadata.json is damaged")
    result = _certify(path, resume=True)
    assert result.complete and result.chunks_done == 0
    assert [line.split(" was damaged ")[0] for line in result.repairs] == [str(path / "metadata.json"),
                                                                         str(path / "inputs.npz")]
    _same_run(reference, path)
    assert runs.load_run(path).sigma == 0.5 and runs.load_run(path).n == 60


# ------------------------------------------------------------- finding 10: hand-edited metadata


@pytest.mark.parametrize(("field", "value"), [("sigma", 1.0), ("n", 30), ("num_classes", 3), ("dataset", "voc2007"),
                                              ("seed", 2), ("max_k_prime", 1)])
def test_a_report_refuses_metadata_that_disagree_with_the_counts(
    reference: Path, tmp_path: Path, field: str, value: object
) -> None:
    path = _copy(reference, tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    meta[field] = value
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DamagedFileError) as caught:
        runs.load_run(path)
    _one_line(caught.value, str(path / "metadata.json"), f" on {field}: ")
    # a resume must not take the edit for damaged counts and resample them: it refuses, naming the field
    (path / "counts.npz").unlink()
    with pytest.raises(ValueError, match=f"{field}: |other inputs"):  # a new seed picks other inputs first
        _certify(path, resume=True, **({field: value} if field in RUN_ARGS else {}),
                 metadata={**RUN_META, **({field: value} if field in RUN_META else {})})
    assert (path / "chunks" / "chunk-000000.npz").read_bytes() == (reference / "chunks" /
                                                                   "chunk-000000.npz").read_bytes()


def test_a_report_on_an_edited_sigma_fails_on_the_command_line(reference: Path, tmp_path: Path) -> None:
    path = _copy(reference, tmp_path)
    text = (path / "metadata.json").read_text()
    assert '"sigma": 0.5' in text
    (path / "metadata.json").write_text(text.replace('"sigma": 0.5', '"sigma": 5.0'))
    proc = run("report", str(path), "--out", str(tmp_path / "report"), check=False)
    assert_one_line_error(proc, str(path / "metadata.json"), "sigma", "5.0", "0.5")
    assert not (tmp_path / "report").exists()


# -------------------------------------------------------------------------------- finding 6: n


def test_n_beyond_the_limit_is_refused_before_any_file(tmp_path: Path, capsys) -> None:
    for n in (runs.MAX_N + 1, 99999999999999999999, 2**63):
        with pytest.raises(ValueError) as caught:
            _certify(tmp_path / "run", n=n)
        _one_line(caught.value, "n must be between 1 and 1000000000", str(n))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------- finding 10: other processes' files


def test_resume_leaves_a_young_temporary_file_alone(reference: Path, tmp_path: Path) -> None:
    path = _copy(reference, tmp_path)
    (path / "chunks" / "chunk-000002.npz").unlink()
    (path / "counts.npz").unlink()
    in_flight = path / "chunks" / ".chunk-000002.npz.abc123.tmp"  # another shard writing this very chunk
    in_flight.write_bytes(b"half of a chunk")
    result = _certify(path, resume=True)
    assert result.complete and in_flight.read_bytes() == b"half of a chunk"
    assert runs.STALE_TMP_SECONDS >= 3600


# ------------------------------------------------------------------------------------ fuzzing


def _mutations(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    """Random bytes, truncations and flipped bytes of ``data`` (``count`` of them, a third each)."""
    cases = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            cases.append(rng.bytes(int(rng.integers(0, 2 * len(data) + 1))))
        elif kind == 1:
            cases.append(data[: int(rng.integers(0, len(data)))])
        else:
            flipped = bytearray(data)
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                flipped[position] ^= int(rng.integers(1, 256))
            cases.append(bytes(flipped))
    return cases


@pytest.mark.parametrize("target", ["counts.npz", "chunks/chunk-000001.npz", "inputs.npz", "metadata.json"])
def test_fuzz_run_files_give_a_clean_error_or_the_same_run(reference: Path, tmp_path: Path, target: str) -> None:
    """Random, truncated and corrupted bytes in each file of a run: load_run names that file in one line,
    or (a byte that does not matter, e.g. a zip timestamp) loads exactly the original counts."""
    rng = np.random.default_rng(abs(hash(target)) % 2**32)
    path = _copy(reference, tmp_path)
    if target.startswith("chunks/"):
        (path / "counts.npz").unlink()  # the chunks are read only when counts.npz is missing
    original = runs.load_run(reference)
    victim = path / target
    data = victim.read_bytes()
    errors = 0
    for case in _mutations(data, rng, 75):
        victim.write_bytes(case)
        try:
            loaded = runs.load_run(path)
        except ValueError as exc:
            errors += 1
            _one_line(exc, str(victim) if target != "metadata.json" or "MultiGuard run" not in str(exc) else str(path))
            continue
        np.testing.assert_array_equal(loaded.counts, original.counts)
        np.testing.assert_array_equal(loaded.labels, original.labels)
        assert (loaded.sigma, loaded.n) == (original.sigma, original.n)
    assert errors >= 50  # the random and truncated cases at least


def test_fuzz_metadata_fields_of_the_wrong_type_or_range(reference: Path, tmp_path: Path) -> None:
    path = _copy(reference, tmp_path)
    meta = json.loads((reference / "metadata.json").read_text())
    bad_values = [None, "abc", -1, 0, 1.5, [], {}, True, 10**30, float("nan")]
    cases = 0
    for field in ("n", "sigma", "max_k_prime", "num_inputs", "chunk_size", "num_chunks", "num_classes"):
        for value in bad_values:
            edited = {**meta, field: value}
            (path / "metadata.json").write_text(json.dumps(edited))
            with pytest.raises(ValueError) as caught:
                runs.load_run(path)
            _one_line(caught.value, str(path / "metadata.json"), field)
            cases += 1
        del edited[field]
        (path / "metadata.json").write_text(json.dumps({k: v for k, v in meta.items() if k != field}))
        with pytest.raises(ValueError) as caught:
            runs.load_run(path)
        _one_line(caught.value, str(path / "metadata.json"), field)
    for whole in ("[]", "5", '"text"', "null", "{" * 100000):
        (path / "metadata.json").write_text(whole)
        with pytest.raises(ValueError) as caught:
            runs.load_run(path)
        _one_line(caught.value, str(path / "metadata.json"))
    assert cases == 70


def test_fuzz_checkpoints_give_a_clean_error(tmp_path: Path) -> None:
    from multiguard.train import read_checkpoint

    model = torch.nn.Linear(4, 3)
    buffer = tmp_path / "real.pt"
    torch.save({"multiguard_checkpoint": 1, "state_dict": model.state_dict(), "meta": {"arch": "x"}}, buffer)
    data = buffer.read_bytes()
    rng = np.random.default_rng(7)
    victim = tmp_path / "model.pt"
    cases = 0
    for i in range(60):
        victim.write_bytes(rng.bytes(int(rng.integers(0, 2 * len(data)))) if i % 2 else
                           data[: int(rng.integers(0, len(data)))])
        with pytest.raises(ValueError) as caught:
            read_checkpoint(victim)
        _one_line(caught.value, str(victim))
        cases += 1
    assert cases == 60


def test_fuzz_through_the_command_line(reference: Path, tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(3)
    path = _copy(reference, tmp_path)
    (path / "counts.npz").write_bytes(rng.bytes(3000))
    proc = run("report", str(path), "--out", str(tmp_path / "r1"), check=False)  # a real subprocess, once
    assert_one_line_error(proc, str(path / "counts.npz"), "--resume")
    for target, content in (("counts.npz", b""), ("metadata.json", rng.bytes(200)), ("metadata.json", b"{}"),
                            ("inputs.npz", b"PK\x03\x04" + rng.bytes(100))):
        damaged = _copy(reference, tmp_path, f"run-{target}-{len(content)}")
        (damaged / target).write_bytes(content)
        if target == "inputs.npz":
            (damaged / "counts.npz").unlink()
        result = run_in_process(capsys, "report", str(damaged), "--out", str(tmp_path / "r2"))
        assert_one_line_error_in_process(result, str(damaged))


@pytest.mark.slow
def test_certify_resume_repairs_a_truncated_chunk_on_the_command_line(tmp_path_factory, tmp_path: Path) -> None:
    checkpoint, reference_dir = tiny_checkpoint(tmp_path_factory), reference_run(tmp_path_factory)
    path = _copy(reference_dir, tmp_path)
    (path / "counts.npz").unlink()
    chunk = path / "chunks" / "chunk-000003.npz"
    _truncate(chunk)
    assert_one_line_error(run("report", str(path), "--out", str(tmp_path / "report"), check=False), str(chunk),
                          "--resume")
    repaired = run("certify", "--checkpoint", str(checkpoint), *CERTIFY_ARGS, "--device", "cpu", "--out", str(path),
                   "--resume")
    assert f"{chunk} is damaged (cannot be read: File is not a zip file): sampling it again" in repaired.stdout
    assert "18 found on disk" in repaired.stdout
    assert_same_counts(reference_dir, path)
