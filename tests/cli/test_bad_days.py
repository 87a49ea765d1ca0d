"""Bad days (issue 10): careless users and unlucky machines never cost a model, a run or a clean error.

One test per finding: damaged run files (resume repairs them, a report names them), hand-edited metadata,
limits, temporary files of other processes, and a fuzz test of random and truncated bytes in every file
MultiGuard reads back. Runs here are sampled in-process from a small MLP (milliseconds); the command line
runs as a user runs it (a subprocess) where that is what is tested, else through ``main()`` in-process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import (
    CERTIFY_ARGS,
    assert_one_line_error,
    assert_one_line_error_in_process,
    assert_same_counts,
    command,
    env,
    load_counts,
    reference_run,
    run,
    run_in_process,
    tiny_checkpoint,
)
from tiny_data import TinyDataset, tiny_smoother

from multiguard import MultiGuard
from multiguard.common import validation as _validation
from multiguard.common.validation import DamagedFileError
from multiguard.runs import folder as _folder
from multiguard.runs import job as _job
from multiguard.runs.spec import RunSpec

# ------------------------------------------------------------------------------ a small real run


RUN_ARGS = dict(n=60, max_k_prime=2, seed=1, num_inputs=12, chunk_size=5)
RUN_META = {"sigma": 0.5, "arch": "mlp", "dataset": "digits", "split": "test"}


def _certify(path: Path, *, metadata: dict | None = None, **kwargs) -> _job.RunResult:
    plan = {**RUN_ARGS, **{name: kwargs.pop(name) for name in list(kwargs) if name in RUN_ARGS}}
    spec = RunSpec.from_metadata(dict(RUN_META) if metadata is None else metadata, **plan)
    return _job.sample_run(path, spec, sampler=tiny_smoother(), dataset=TinyDataset(), **kwargs)


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
    first, second = _folder.load_run(a), _folder.load_run(b)
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
        _folder.load_run(path)
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
        _folder.load_run(path)
    _one_line(caught.value, str(chunk), "--resume")
    result = _certify(path, resume=True)
    assert result.chunks_done == 1 and len(result.repairs) == 1 and str(chunk) in result.repairs[0]
    _same_run(reference, path)


def test_a_truncated_counts_file_is_named_and_merged_again_by_resume(reference: Path, tmp_path: Path) -> None:
    path = _copy(reference, tmp_path)
    _truncate(path / "counts.npz")
    with pytest.raises(DamagedFileError) as caught:
        _folder.load_run(path)
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
        _folder.load_run(path)
    _one_line(caught.value, str(path / "metadata.json"), "--resume")
    with pytest.raises(ValueError) as refused:  # other arguments than the counts were sampled with
        _certify(path, resume=True, n=70)
    _one_line(refused.value, "n: the arguments give 70, the counts were sampled with 60", "metadata.json is damaged")
    result = _certify(path, resume=True)
    assert result.complete and result.chunks_done == 0
    assert [line.split(" was damaged ")[0] for line in result.repairs] == [str(path / "metadata.json"),
                                                                         str(path / "inputs.npz")]
    _same_run(reference, path)
    assert _folder.load_run(path).sigma == 0.5 and _folder.load_run(path).n == 60


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
        _folder.load_run(path)
    _one_line(caught.value, str(path / "metadata.json"), f" on {field}: ")
    # a resume must not take the edit for damaged counts and resample them: it refuses, naming the field
    (path / "counts.npz").unlink()
    with pytest.raises(ValueError, match=f"{field}:? |other inputs"):  # a new seed picks other inputs first
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


def test_a_run_records_the_sigma_its_counts_are_sampled_with(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:  # the sampler's noise is 0.5
        _certify(tmp_path / "run", metadata={**RUN_META, "sigma": 0.25})
    _one_line(caught.value, "sigma 0.25 is not the sampler's sigma 0.5")
    assert not (tmp_path / "run").exists()
    _certify(tmp_path / "run", metadata={"arch": "mlp"})
    assert _folder.load_run(tmp_path / "run").sigma == 0.5


# -------------------------------------------------------------------------------- finding 6: n


def test_n_beyond_the_limit_is_refused_before_any_file(tmp_path: Path, capsys) -> None:
    for n in (_validation.MAX_N + 1, 99999999999999999999, 2**63):
        with pytest.raises(ValueError) as caught:
            _certify(tmp_path / "run", n=n)
        _one_line(caught.value, "n must be between 1 and 1000000000", str(n))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="n must be between 1 and 1000000000"):  # predict and attack sample here
        tiny_smoother().sample_counts(torch.rand(1, 6), _validation.MAX_N + 1)
    result = run_in_process(capsys, "certify", "--checkpoint", str(tmp_path / "model.pt"), "--n", str(2**63),
                            "--out", str(tmp_path / "run"))
    assert_one_line_error_in_process(result, "n must be between 1 and 1000000000")  # before the checkpoint
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
    assert _folder.STALE_TMP_SECONDS >= 3600


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
    rng = np.random.default_rng(zlib.crc32(target.encode()))  # the same cases in every process
    path = _copy(reference, tmp_path)
    if target.startswith("chunks/"):
        (path / "counts.npz").unlink()  # the chunks are read only when counts.npz is missing
    original = _folder.load_run(reference)
    victim = path / target
    data = victim.read_bytes()
    errors = 0
    for case in _mutations(data, rng, 75):
        victim.write_bytes(case)
        try:
            loaded = _folder.load_run(path)
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
                _folder.load_run(path)
            _one_line(caught.value, str(path / "metadata.json"), field)
            cases += 1
        del edited[field]
        (path / "metadata.json").write_text(json.dumps({k: v for k, v in meta.items() if k != field}))
        with pytest.raises(ValueError) as caught:
            _folder.load_run(path)
        _one_line(caught.value, str(path / "metadata.json"), field)
    for whole in ("[]", "5", '"text"', "null", "{" * 100000):
        (path / "metadata.json").write_text(whole)
        with pytest.raises(ValueError) as caught:
            _folder.load_run(path)
        _one_line(caught.value, str(path / "metadata.json"))
    assert cases == 70


def test_fuzz_checkpoints_give_a_clean_error(tmp_path: Path) -> None:
    from multiguard.common.torch_files import read_checkpoint

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


# ------------------------------------------------------------- finding 1: a trained model is kept


def test_train_refuses_to_replace_a_checkpoint_before_any_work(tmp_path: Path) -> None:
    from multiguard.training.classifier import train

    model = tmp_path / "model.pt"
    model.write_bytes(b"eight epochs of work")
    with pytest.raises(ValueError) as caught:
        train("multidigits", epochs=1, train_size=16, test_size=8, out=model, progress=False)
    _one_line(caught.value, str(model), "--resume", "--overwrite")
    assert model.read_bytes() == b"eight epochs of work"
    with pytest.raises(ValueError, match="is a folder"):
        train("multidigits", epochs=1, train_size=16, test_size=8, out=tmp_path, progress=False)


@pytest.mark.slow
def test_train_on_the_command_line_keeps_the_model_unless_asked(tmp_path_factory, tmp_path: Path) -> None:
    model = Path(shutil.copy(tiny_checkpoint(tmp_path_factory), tmp_path / "model.pt"))
    before = model.read_bytes()
    args = ["train", "--epochs", "1", "--train-size", "50", "--test-size", "20", "--quiet", "--device", "cpu"]
    assert_one_line_error(run(*args, "--out", str(model), check=False), str(model), "--resume", "--overwrite")
    assert model.read_bytes() == before
    run(*args, "--out", str(model), "--overwrite")
    assert model.read_bytes() != before and oct(model.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_the_demo_never_replaces_a_file_it_did_not_make(tmp_path: Path) -> None:
    from multiguard.demo import run_demo

    (tmp_path / "model.pt").write_bytes(b"a model of mine, in another format")
    with pytest.raises(ValueError) as caught:
        run_demo(tmp_path, quick=True, device="cpu", log=lambda line: None)
    _one_line(caught.value, str(tmp_path / "model.pt"), "not a MultiGuard checkpoint")
    assert (tmp_path / "model.pt").read_bytes() == b"a model of mine, in another format"


# --------------------------------------------------------------- finding 4: all-or-nothing reports


def test_a_report_is_validated_before_anything_is_written(reference: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    result = run_in_process(capsys, "report", str(reference), "--k-prime", "2", "--methods", "jia", "--out", str(out))
    assert_one_line_error_in_process(result, "jia (Jia et al.) needs k' = 1", "--k-prime 1")
    result = run_in_process(capsys, "report", str(reference), "--radii", "0:1000000:0.001", "--out", str(out))
    assert_one_line_error_in_process(result, "radii must be a grid of at most 100000 points", "0:1000000:0.001")
    result = run_in_process(capsys, "report", str(reference), "--radii", "0:1:1e-300", "--out", str(out))
    assert_one_line_error_in_process(result, "at most 100000 points")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no report folder, no temporary folder


def test_a_report_never_writes_into_someone_elses_folder(reference: Path, tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    result = run_in_process(capsys, "report", str(reference), "--quiet", "--out", str(mine))
    assert_one_line_error_in_process(result, str(mine), "--overwrite")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    code, out, _ = run_in_process(capsys, "report", str(reference), "--quiet", "--overwrite", "--out", str(mine))
    assert code == 0
    assert sorted(p.name for p in mine.iterdir()) == ["curves.csv", "f1.png", "notes.txt", "precision.png",
                                                      "recall.png", "results.json", "summary.md"]
    assert (mine / "notes.txt").read_text() == "mine"

    report = tmp_path / "report"  # a previous report is replaced whole, without asking
    assert run_in_process(capsys, "report", str(reference), "--k", "1", "--quiet", "--out", str(report))[0] == 0
    first = (report / "curves.csv").read_text()
    assert run_in_process(capsys, "report", str(reference), "--k", "2", "--quiet", "--out", str(report))[0] == 0
    second = (report / "curves.csv").read_text()
    assert first != second and ",2,1," in second.splitlines()[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "report"]  # no temporary folder left
    killed, writing = tmp_path / ".report.killed.tmp", tmp_path / ".report.writing.tmp"
    for folder in (killed, writing):
        folder.mkdir()
    old = killed.stat().st_mtime - _folder.STALE_TMP_SECONDS - 60
    os.utime(killed, (old, old))
    assert run_in_process(capsys, "report", str(reference), "--quiet", "--out", str(report))[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [writing.name, "mine", "report"]  # only the old one went


# ------------------------------------------------------------------ finding 9: no abbreviations


def test_no_option_is_ever_abbreviated(reference: Path, tmp_path: Path, capsys) -> None:
    from multiguard.cli import build_parser

    result = run_in_process(capsys, "report", str(reference), "--nam", "x", "--out", str(tmp_path / "r"))
    assert_one_line_error_in_process(result, "unrecognized arguments: --nam", "multiguard report --help")
    assert not (tmp_path / "r").exists()
    for argv in (["certify", "--check", "model.pt", "--out", "r"], ["train", "--epoch", "2", "--out", "m.pt"],
                 ["report", str(reference), "--out", "r", "--k-p", "2"], ["predict", "--checkpoint", "m.pt", "--js",
                                                                          "x.png"],
                 ["attack", "--checkpoint", "m.pt", "--out", "a", "--rad", "1"], ["datasets", "list", "--js"],
                 ["demo", "--qu"], ["--vers"]):
        result = run_in_process(capsys, *argv)
        assert_one_line_error_in_process(result)  # a missing required option or the unknown one, never taken
        assert "unrecognized arguments" in result[2] or "arguments are required" in result[2], result
    parser = build_parser()
    stack = [parser]
    while stack:  # every parser and subparser, however deep
        current = stack.pop()
        assert current.allow_abbrev is False, current.prog
        for action in current._actions:
            stack.extend(getattr(action, "choices", None).values() if isinstance(action.choices, dict) else [])


# ---------------------------------------------------------- findings 3 and 8: messages, no traceback


def test_debug_shows_the_traceback_that_is_otherwise_one_line(reference: Path, tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    from multiguard.cli import main

    path = _copy(reference, tmp_path)
    _truncate(path / "counts.npz")
    assert_one_line_error_in_process(run_in_process(capsys, "report", str(path), "--out", str(tmp_path / "r")),
                                     str(path / "counts.npz"))
    with pytest.raises(DamagedFileError):  # the exception itself reaches Python, which prints its traceback
        main(["report", str(path), "--out", str(tmp_path / "r"), "--debug"])
    monkeypatch.setenv("MULTIGUARD_DEBUG", "1")
    with pytest.raises(DamagedFileError):
        main(["report", str(path), "--out", str(tmp_path / "r")])


def test_a_model_returning_bool_is_named(tmp_path: Path) -> None:
    class Threshold(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :4] > 0.5

    smoother = MultiGuard(Threshold(), num_classes=4, sigma=0.5, device="cpu")
    with pytest.raises(ValueError) as caught:
        smoother.sample_counts(torch.rand(2, 6), 10)
    _one_line(caught.value, "model must return real-valued scores", "torch.bool")


@pytest.mark.slow
def test_folders_given_as_files_are_named(tmp_path_factory, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_checkpoint(tmp_path_factory), folder / "model.pt")
    result = run_in_process(capsys, "certify", "--checkpoint", str(folder), "--device", "cpu", "--out",
                            str(tmp_path / "run"))
    assert_one_line_error_in_process(result, f"checkpoint: {folder} is a folder", str(folder / "model.pt"))
    result = run_in_process(capsys, "predict", "--checkpoint", str(folder / "model.pt"), str(folder), "--device",
                            "cpu")
    assert_one_line_error_in_process(result, f"images: {folder} is a folder")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root needs setpriv to be nobody")
def test_permission_denied_names_out(reference: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    os.chmod(tmp_path, 0o755)
    argv = [*command(), "report", str(reference), "--quiet", "--out", str(locked / "report")]
    if os.geteuid() == 0:  # root may write anywhere: run as nobody
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*as_nobody, *command(), "--version"], env=env(), capture_output=True, timeout=60)
        if probe.returncode != 0:  # e.g. a checkout inside a private (0700) folder: nobody cannot start Python
            pytest.skip("user nobody cannot run this checkout's multiguard here: " + probe.stderr.decode()[:200])
        argv = [*as_nobody, *argv]
    proc = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "permission denied", str(locked / "report"), "(--out)")
    assert list(locked.iterdir()) == []


# -------------------------------------------------------------------- finding 3: a full disk


def _small_filesystems_work() -> bool:
    """Whether this machine lets an unprivileged user namespace mount a tmpfs (a real, small, full disk)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs \"$(mktemp -d)\""], capture_output=True, timeout=30)
    return probe.returncode == 0


_FULL_DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size=4m tmpfs "$DISK"
fill() { rm -f "$DISK/filler"; head -c $(( 4 * 1024 * 1024 - $1 * 1024 )) /dev/zero > "$DISK/filler" 2>/dev/null; }
step() {  # step NAME FREE_KB COMMAND...: once on a nearly full disk, once after the space is freed
  name=$1; free=$2; shift 2
  fill "$free"
  "$@" > "$OUT/$name.1.out" 2> "$OUT/$name.1.err"; echo $? > "$OUT/$name.1.rc"
  (cd "$DISK" && find . -path ./filler -prune -o -print | sort) > "$OUT/$name.1.files"
  rm -f "$DISK/filler"
  if [ "$name" = certify ]; then set -- "$@" --resume; fi
  "$@" > "$OUT/$name.2.out" 2> "$OUT/$name.2.err"; echo $? > "$OUT/$name.2.rc"
}
step certify 24 $MG certify --checkpoint "$CHECKPOINT" $CERTIFY_ARGS --device cpu --quiet --out "$DISK/run"
step report 48 $MG report "$DISK/run" --quiet --out "$DISK/report"
step train 400 $MG train --epochs 1 --train-size 200 --test-size 100 --quiet --device cpu --out "$DISK/model.pt"
cp -r "$DISK/run" "$DISK/report" "$DISK/model.pt" "$OUT/"
mount -t tmpfs -o ro,size=64k tmpfs "$READ_ONLY"
$MG report "$DISK/run" --quiet --out "$READ_ONLY/report" > /dev/null 2> "$OUT/ro.err"; echo $? > "$OUT/ro.rc"
"""


@pytest.mark.slow
@pytest.mark.skipif(not _small_filesystems_work() or os.sysconf("SC_PAGE_SIZE") != 4096,
                    reason="needs user namespaces with tmpfs mounts (and 4 KB pages: the free space is sized in them)")
def test_a_full_disk_leaves_whole_files_and_the_same_command_completes(tmp_path_factory, tmp_path: Path) -> None:
    """certify, report and train on a real 4 MB file system filled up to a few KB: each fails with one line
    (exit 1, the file named), leaves only whole files, and completes once space is freed, with the results of
    an uninterrupted run."""
    checkpoint, reference_dir = tiny_checkpoint(tmp_path_factory), reference_run(tmp_path_factory)
    disk, out, read_only = tmp_path / "disk", tmp_path / "out", tmp_path / "read-only"
    for folder in (disk, out, read_only):
        folder.mkdir()
    environment = {**env(), "DISK": str(disk), "OUT": str(out), "READ_ONLY": str(read_only), "MG": " ".join(command()),
                   "CHECKPOINT": str(checkpoint), "CERTIFY_ARGS": " ".join(CERTIFY_ARGS)}
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", _FULL_DISK_SCRIPT],
                          env=environment, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name in ("certify", "report", "train"):
        first = subprocess.CompletedProcess([], int((out / f"{name}.1.rc").read_text()), "",
                                            (out / f"{name}.1.err").read_text())
        assert first.returncode == 1, (name, first.stderr)
        lines = first.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in first.stderr, (name, first.stderr)
        assert lines[0].startswith("multiguard: error: no space left on the device of ") and str(disk) in lines[0]
        assert "run the same command again" in lines[0]
        assert (out / f"{name}.2.rc").read_text().strip() == "0", (name, (out / f"{name}.2.err").read_text())
        files = (out / f"{name}.1.files").read_text().split()
        assert not [f for f in files if f.endswith(".tmp") or "/." in f], (name, files)  # nothing half-written
    assert "--resume" in (out / "certify.1.err").read_text()
    assert "./run/chunks/chunk-000000.npz" in (out / "certify.1.files").read_text()  # it filled up mid-run
    assert "./report" not in (out / "report.1.files").read_text()  # all or nothing
    assert "./model.pt" not in (out / "train.1.files").read_text()
    first, second = load_counts(reference_dir), load_counts(out / "run")
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert sorted(os.listdir(out / "report")) == ["curves.csv", "f1.png", "precision.png", "recall.png",
                                                  "results.json", "summary.md"]
    from multiguard.evaluation.report import make_report

    make_report([reference_dir], tmp_path / "expected")  # the same run, reported on a roomy disk
    assert (out / "report" / "curves.csv").read_bytes() == (tmp_path / "expected" / "curves.csv").read_bytes()
    assert (out / "ro.rc").read_text().strip() == "1"
    read_only_error = (out / "ro.err").read_text().strip().splitlines()
    assert len(read_only_error) == 1 and "read-only file system" in read_only_error[0]
    assert str(read_only / "report") in read_only_error[0] and "(--out" in read_only_error[0]
    trained = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    reference_model = torch.load(checkpoint, weights_only=True)["state_dict"]
    for key, value in reference_model.items():
        assert torch.equal(trained[key], value), key


def test_a_full_disk_in_process_leaves_whole_files_and_resume_completes(
    reference: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The same through the real writer on any machine: the fsync of the n-th file written fails with ENOSPC."""
    real_fsync = os.fsync

    def full_after(count: int) -> None:
        calls = {"n": 0}

        def fsync(fd: int) -> None:
            calls["n"] += 1
            if calls["n"] > count:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def leftovers(folder: Path) -> list[str]:
        return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp")]

    full_after(4)  # metadata.json, inputs.npz, two chunks
    with pytest.raises(OSError, match="No space left"):
        _certify(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "chunks").iterdir()) == ["chunk-000000.npz",
                                                                               "chunk-000001.npz"]
    assert leftovers(tmp_path) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _certify(tmp_path / "run", resume=True).complete
    _same_run(reference, tmp_path / "run")

    full_after(2)  # curves.csv and precision.png, then the disk is full
    result = run_in_process(capsys, "report", str(reference), "--quiet", "--out", str(tmp_path / "report"))
    code, _, err = result
    assert code == 1 and err.count("\n") == 1 and "no space left on the device" in err and "(--out" in err, err
    assert not (tmp_path / "report").exists() and leftovers(tmp_path) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert run_in_process(capsys, "report", str(reference), "--quiet", "--out", str(tmp_path / "report"))[0] == 0
    assert run_in_process(capsys, "report", str(reference), "--quiet", "--out", str(tmp_path / "again"))[0] == 0
    assert (tmp_path / "report" / "curves.csv").read_bytes() == (tmp_path / "again" / "curves.csv").read_bytes()

    from multiguard.training.classifier import train

    settings = dict(epochs=1, train_size=16, test_size=8, batch_size=8, progress=False)
    full_after(0)
    with pytest.raises(OSError, match="No space left"):
        train("multidigits", out=tmp_path / "model.pt", **settings)
    assert not (tmp_path / "model.pt").exists() and leftovers(tmp_path) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    model, _ = train("multidigits", out=tmp_path / "model.pt", **settings)
    reference_model, _ = train("multidigits", **settings)
    for key, value in reference_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# ------------------------------------------------------------------ finding 8: an Excel CSV export


def test_a_csv_whose_header_starts_with_a_byte_order_mark_is_read(tmp_path: Path, capsys) -> None:
    from PIL import Image

    (tmp_path / "img").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "img" / f"{name}.png")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    for split in ("train", "test"):  # what Excel writes as "CSV UTF-8": a BOM, then the header
        (tmp_path / f"{split}.csv").write_bytes("\ufeffpath,labels\nimg/a.png,cat|dog\nimg/b.png,dog\n".encode())
    code, out, err = run_in_process(capsys, "datasets", "describe", "--dataset", "csv", "--data-root", str(tmp_path),
                                    "--split", "train", "--json")
    assert code == 0, err
    description = json.loads(out)
    assert description["images"] == 2 and description["label_counts"] == {"cat": 1, "dog": 2}


def test_an_unexpected_failure_is_one_line_with_exit_status_1(tmp_path: Path, capsys, monkeypatch) -> None:
    """A model of the user's own that fails in its forward pass while training (create_model's check of the
    output shape runs it once in eval mode): no traceback unless asked for."""
    (tmp_path / "failing_model.py").write_text(
        "import torch\n\n\n"
        "class Failing(torch.nn.Module):\n"
        "    def __init__(self, num_classes):\n"
        "        super().__init__()\n"
        "        self.linear = torch.nn.Linear(1, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        if self.training:\n"
        "            raise RuntimeError('the GPU kernel crashed')\n"
        "        return self.linear(x.mean(dim=(1, 2, 3))[:, None])\n\n\n"
        "def make(num_classes):\n"
        "    return Failing(num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["train", "--arch", "failing_model:make", "--epochs", "1", "--train-size", "16", "--test-size", "8",
            "--quiet", "--device", "cpu", "--out", str(tmp_path / "model.pt")]
    code, _, err = run_in_process(capsys, *argv)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("multiguard: error: unexpected RuntimeError: the GPU kernel crashed") and "--debug" in err
    assert not (tmp_path / "model.pt").exists()
    with pytest.raises(RuntimeError, match="the GPU kernel crashed"):
        from multiguard.cli import main

        main([*argv, "--debug"])


def test_a_checkpoint_of_random_bytes_through_the_command_line(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(np.random.default_rng(5).bytes(5000))
    result = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), "--device", "cpu", "--out",
                            str(tmp_path / "run"))
    assert_one_line_error_in_process(result, f"checkpoint: {checkpoint} is not a MultiGuard checkpoint")
    assert not (tmp_path / "run").exists()


def _dropping_meta(key: str):
    def change(checkpoint: dict) -> None:
        checkpoint["meta"].pop(key)

    return change


def test_checkpoints_with_parts_missing_or_edited_give_a_clean_error(tmp_path: Path) -> None:
    from multiguard.models.checkpoints import load_checkpoint
    from multiguard.training.classifier import train

    real = tmp_path / "real.pt"
    train("multidigits", epochs=1, train_size=16, test_size=8, batch_size=8, out=real, progress=False)
    original = torch.load(real, weights_only=True)
    first_weight = next(iter(original["state_dict"]))

    def edited(change) -> dict:
        copy = {**original, "meta": dict(original["meta"]), "state_dict": dict(original["state_dict"])}
        change(copy)
        return copy

    cases = {
        "marker of another type": lambda c: c.update(multiguard_checkpoint="1"),
        "meta not a dict": lambda c: c.update(meta=[1, 2]),
        "no state_dict": lambda c: c.pop("state_dict"),
        "a weight missing": lambda c: c["state_dict"].pop(first_weight),
        "a weight of another shape": lambda c: c["state_dict"].update({first_weight: torch.zeros(3)}),
        **{f"meta without {key}": _dropping_meta(key)
           for key in ("arch", "num_classes", "image_size", "in_channels", "class_names", "mean")},
    }
    victim = tmp_path / "model.pt"
    for name, change in cases.items():
        torch.save(edited(change), victim)
        with pytest.raises(ValueError) as caught:
            load_checkpoint(victim)
        _one_line(caught.value, str(victim))
        assert "checkpoint" in str(caught.value), name
    load_checkpoint(real)  # the control: the original loads


def test_fuzz_resume_repairs_a_chunk_whatever_its_bytes(reference: Path, tmp_path: Path) -> None:
    """Random, truncated and corrupted bytes in a chunk: a resume samples it again (or finds it intact) and the
    run ends bit-identical to the reference, every time."""
    rng = np.random.default_rng(11)
    chunk = reference / "chunks" / "chunk-000001.npz"
    redone = 0
    for i, case in enumerate(_mutations(chunk.read_bytes(), rng, 30)):
        path = _copy(reference, tmp_path, f"run-{i}")
        (path / "counts.npz").unlink()
        (path / "chunks" / chunk.name).write_bytes(case)
        result = _certify(path, resume=True)
        assert result.complete and result.chunks_done <= 1
        redone += result.chunks_done
        assert len(result.repairs) == result.chunks_done
        _same_run(reference, path)
        shutil.rmtree(path)
    assert redone >= 20  # the random and truncated cases at least
