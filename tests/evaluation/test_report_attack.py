"""``report --attack`` over a thresholded attack: the per-label attacked and certified curves come from
``empirical_thresholded.csv`` into the figures (gap shaded), ``results.json`` and a section of ``summary.md``;
a top-k-only attack folder, or a run without thresholds, gives the report it gave before."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from multiguard.evaluation import plots as _plots
from multiguard.evaluation import report as _report
from multiguard.evaluation.attack_run import run_attack
from multiguard.evaluation.empirical import THRESHOLDED_CSV, load_thresholded
from multiguard.runs.certify_step import sample_checkpoint

RADII = [0.25, 0.5]
GRID = "0:1:0.25"
METRICS = ("precision", "recall", "f1")


@pytest.fixture(scope="module")
def folders(tiny_model_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """A thresholded run and a top-k run of the tiny checkpoint (6 inputs, n = 100), its attack with
    thresholds (``full``) and a copy without ``empirical_thresholded.csv`` (``topk``)."""
    root = tmp_path_factory.mktemp("report-attack")
    common = dict(num_inputs=6, n=100, seed=0, device="cpu")
    sample_checkpoint(tiny_model_checkpoint, root / "run-thr", thresholds=0.5, chunk_size=6, **common)
    sample_checkpoint(tiny_model_checkpoint, root / "run-topk", chunk_size=6, **common)
    run_attack(tiny_model_checkpoint, out_dir=root / "attack", radii=RADII, k=3, steps=3, samples=4, restarts=1,
               thresholds=0.5, **common)
    shutil.copytree(root / "attack", root / "topk" / "attack")  # the same folder name: the same curve names
    (root / "topk" / "attack" / THRESHOLDED_CSV).unlink()
    return {"run-thr": root / "run-thr", "run-topk": root / "run-topk", "full": root / "attack",
            "topk": root / "topk" / "attack", "root": root}


def _report_of(folders: dict[str, Path], run: str, attack: str, name: str, **options) -> _report.Report:
    return _report.make_report([folders[run]], folders["root"] / name, radius_grid=GRID,
                               attacks=[folders[attack]], **options)


def test_the_thresholded_curves_are_the_csvs_in_the_figure_results_and_summary(folders) -> None:
    table = load_thresholded(folders["full"])
    report = _report_of(folders, "run-thr", "full", "full")
    (curve,) = [c for c in report.curves if c.method == "attack" and c.q is not None]
    assert curve.q == 0.5 and curve.radius.tolist() == RADII and curve.certified is not None
    for metric in METRICS:
        assert curve.metric(metric).tolist() == table[metric].tolist()
        assert curve.certified[metric].tolist() == table[f"certified_{metric}"].tolist()
    assert curve.violations.tolist() == table["violations"].astype(int).tolist()

    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    for metric in METRICS:  # the lines the figure draws: the attacked and the certified curve, the gap between
        fig, ax = plt.subplots()
        _plots._draw_panel(ax, report.curves, metric, None)
        drawn = {line.get_label(): line.get_ydata().tolist() for line in ax.get_lines()}
        assert drawn["empirical (attack), q=0.5"] == table[metric].tolist()
        assert drawn["certified, attack's inputs (per-label, q=0.5)"] == table[f"certified_{metric}"].tolist()
        gaps = [c.get_label() for c in ax.collections]
        assert "gap: certified to attacked (per-label, q=0.5)" in gaps and "gap: certified to attacked" in gaps
        plt.close(fig)

    document = json.loads((folders["root"] / "full" / "results.json").read_text())
    records = [r for r in document["attacked"] if "q" in r]
    assert [r["radius"] for r in records] == RADII and {r["q"] for r in records} == {0.5}
    for metric in METRICS:
        assert [r[f"attacked_{metric}"] for r in records] == pytest.approx(table[metric].tolist(), abs=1e-9)
        assert [r[f"certified_{metric}"] for r in records] == pytest.approx(table[f"certified_{metric}"].tolist(),
                                                                               abs=1e-9)
    assert [r["violations"] for r in records] == table["violations"].astype(int).tolist()

    section = report.summary.split("## Under attack, per-label: attack (q = 0.5, 6 inputs) (%)")[1].split("\n## ")[0]
    recall = next(line for line in section.splitlines() if line.startswith("| recall, empirical (attack)"))
    assert [cell.strip() for cell in recall.strip("|").split("|")][1:] == [f"{100 * v:.1f}" for v in table["recall"]]
    assert "| inputs with a decision against their certificate (count) |" in section


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_top_k_only_attack_or_a_run_without_thresholds_gives_the_report_of_before(folders) -> None:
    full = _report_of(folders, "run-thr", "full", "thr-full")
    topk = _report_of(folders, "run-thr", "topk", "thr-topk")
    # The thresholded attack only adds: its section, its records, its rows, nothing else changes.
    head, rest = full.summary.split("## Under attack, per-label:")
    assert topk.summary == head + "## " + rest.split("\n## ", 1)[1]
    documents = [json.loads((folders["root"] / name / "results.json").read_text()) for name in ("thr-full", "thr-topk")]
    assert [r for r in documents[0]["attacked"] if "q" not in r] == documents[1]["attacked"]
    assert {k: v for k, v in documents[0].items() if k != "attacked"} == \
        {k: v for k, v in documents[1].items() if k != "attacked"}
    rows = [list(csv.reader(io.StringIO((folders["root"] / name / "curves.csv").read_text())))
            for name in ("thr-full", "thr-topk")]
    assert [r for r in rows[0] if not (r[1] == "attack" and r[-1])] == rows[1]
    assert [r for r in rows[0] if r[1] == "attack" and r[-1]]  # the per-label attack rows, q in the last column
    figures = [_files(folders["root"] / name) for name in ("thr-full", "thr-topk")]
    assert all(figures[0][f"{m}.png"] != figures[1][f"{m}.png"] for m in METRICS)

    # Over a run without thresholds the thresholded CSV is not drawn: the same files byte for byte.
    _report_of(folders, "run-topk", "full", "plain-full")
    _report_of(folders, "run-topk", "topk", "plain-topk")
    assert _files(folders["root"] / "plain-full") == _files(folders["root"] / "plain-topk")


def test_a_thresholded_attack_at_another_q_or_other_thresholds_is_refused(folders, tiny_model_checkpoint) -> None:
    with pytest.raises(ValueError, match=r"^attack: .* with q = 0.5, but the report shows q = 0.3; add --q 0.5$"):
        _report_of(folders, "run-thr", "full", "bad-q", q=(0.3,))
    other = folders["root"] / "run-thr-0.4"
    sample_checkpoint(tiny_model_checkpoint, other, thresholds=0.4, chunk_size=6, num_inputs=6, n=100, seed=0,
                      device="cpu")
    with pytest.raises(ValueError, match=r"^attack: .* attacked the thresholds .* certified .*--threshold"):
        _report.make_report([other], folders["root"] / "bad-thr", radius_grid=GRID, attacks=[folders["full"]])
    assert not (folders["root"] / "bad-q").exists() and not (folders["root"] / "bad-thr").exists()
