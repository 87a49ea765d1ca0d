"""Reports from saved runs: radius grids, curves, CSV, plots, summary tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from multiguard import MultiGuard
from multiguard.certificates import bounds as _bounds
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import topk as _topk
from multiguard.evaluation import curves as _curves
from multiguard.evaluation import plots as _plots
from multiguard.evaluation import report as _report
from multiguard.runs import folder as _folder
from multiguard.runs import job as _job
from multiguard.runs.spec import RunSpec


class _Blobs:
    """40 inputs of 8 features with 6 labels, about 2 per input (an in-memory dataset)."""

    class_names = [f"l{i}" for i in range(6)]

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1)
        self.y = torch.zeros(40, 6)
        for i in range(40):
            self.y[i, torch.randperm(6, generator=generator)[: 1 + i % 3]] = 1.0
        self.x = torch.cat([self.y, torch.zeros(40, 2)], dim=1) + 0.1 * torch.randn(40, 8, generator=generator)

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished RUN_DIR sampled from a linear model that reads the labels off the first 6 features."""
    model = torch.nn.Linear(8, 6)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[:, :6] = 4.0 * torch.eye(6)
        model.bias.zero_()
    out = tmp_path_factory.mktemp("report") / "run"
    spec = RunSpec(n=400, max_k_prime=3, num_inputs=30, chunk_size=10, sigma=0.25, arch="linear", dataset="blobs",
                   split="test")
    _job.sample_run(out, spec, sampler=MultiGuard(model, 6, sigma=0.25, device="cpu"), dataset=_Blobs())
    return out


def test_parse_radius_grid() -> None:
    grid = _curves.parse_radius_grid("0:3:0.05")
    assert len(grid) == 61 and grid[0] == 0.0 and grid[-1] == 3.0
    for r in (0.25, 0.5, 1.0):
        assert r in grid.tolist()  # exact, so summary radii hit the grid
    np.testing.assert_array_equal(_curves.parse_radius_grid("1, 0.5,0"), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(_curves.parse_radius_grid([0.5, 0.25]), [0.25, 0.5])
    assert _curves.parse_radius_grid("0.7").tolist() == [0.7]
    for bad in ("0:abc", "0:1", "1:0:0.1", "0:1:0", "-1", "", "nan", "0:1:0.1:2"):
        with pytest.raises(ValueError, match="radii"):
            _curves.parse_radius_grid(bad)


def test_curves_match_certify_directly(run_dir: Path) -> None:
    run = _folder.load_run(run_dir)
    radius = np.array([0.0, 0.1, 0.2])
    curves = _curves.compute_curves([run], k=[2], k_prime=[1], alpha=[0.01], radius=radius)
    assert [c.method for c in curves] == ["multiguard", "multiguard-first-terms", "jia"]
    lower, upper = _bounds.label_probability_bounds(run.counts[:, 0], 400, 0.01)
    radii = _topk.certified_radii(lower, upper, run.labels, k=2, k_prime=1, sigma=0.25)
    expected = _metrics.certified_metrics(_topk.intersection_size_from_radii(radii, radius), run.labels, 2)
    np.testing.assert_allclose(curves[0].precision, expected.precision)
    np.testing.assert_allclose(curves[0].recall, expected.recall)
    np.testing.assert_allclose(curves[0].f1, expected.f1)
    assert curves[0].num_inputs == 30 and curves[0].sigma == 0.25 and curves[0].n == 400


def test_methods_order_and_jia_only_for_k_prime_1(run_dir: Path) -> None:
    run = _folder.load_run(run_dir)
    curves = _curves.compute_curves([run], k=[1, 3], k_prime=[1, 2], alpha=[0.001, 0.1],
                                   radius=_curves.parse_radius_grid("0:1:0.05"))
    assert {c.method for c in curves if c.k_prime == 2} == {"multiguard", "multiguard-first-terms"}
    assert len(curves) == 2 * 2 * (3 + 2)
    by_setting = {c.setting: c for c in curves}
    for c in curves:
        if c.method == "multiguard":
            for other in ("jia", "multiguard-first-terms"):
                rival = by_setting.get((c.run, other, c.k, c.k_prime, c.alpha))
                if rival is not None:
                    for metric in ("precision", "recall", "f1"):
                        assert (c.metric(metric) >= rival.metric(metric) - 1e-12).all(), (other, c.setting)
        for metric in ("precision", "recall", "f1"):  # curves never increase with R
            values = c.metric(metric)
            assert (np.diff(values) <= 1e-12).all() and values.min() >= 0 and values.max() <= 1


def test_bad_arguments_name_themselves(run_dir: Path) -> None:
    run = _folder.load_run(run_dir)
    with pytest.raises(ValueError, match="k must be between 1 and the number of classes \\(6\\)"):
        _curves.compute_curves([run], k=[7])
    with pytest.raises(ValueError, match="k_prime must be between 1 and 3"):
        _curves.compute_curves([run], k=[3], k_prime=[4])
    with pytest.raises(ValueError, match="alpha"):
        _curves.compute_curves([run], alpha=[1.5])
    with pytest.raises(ValueError, match="methods"):
        _curves.compute_curves([run], methods=["cohen"])


def test_make_report_files_csv_and_summary(run_dir: Path, tmp_path: Path) -> None:
    result = _report.make_report([run_dir, run_dir], tmp_path / "rep", k=[2, 3], k_prime=[1], radius_grid="0:2:0.1",
                                summary_radii=[0.3], names=["a", "b"])
    names = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert names == ["curves.csv", "f1.png", "precision.png", "recall.png", "results.json", "summary.md"]
    for metric in ("precision", "recall", "f1"):
        assert (tmp_path / "rep" / f"{metric}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "rep" / "curves.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == _curves.CSV_COLUMNS
    assert len(rows) - 1 == 2 * 2 * 3 * 22  # runs x k x methods x (21 grid radii + the summary radius 0.25)
    back = _curves.read_csv(tmp_path / "rep" / "curves.csv")
    assert len(back) == len(result.curves) == 12
    for a, b in zip(back, result.curves, strict=True):
        assert a.setting == b.setting
        np.testing.assert_allclose(a.f1, b.f1, rtol=1e-9)
    summary = (tmp_path / "rep" / "summary.md").read_text()
    for text in ("R = 0 ", "R = 0.25", "R = 0.3", "R = 0.5", "R = 1 ", "Jia et al.", "first terms", "| a |"):
        assert text in summary, text
    curve = next(c for c in result.curves if c.setting == ("a", "multiguard", 3, 1, 0.001))
    assert f"{100 * curve.at('f1', 0.5):.1f}" in summary


def test_extra_curves_are_drawn_and_written(run_dir: Path, tmp_path: Path) -> None:
    radius = _curves.parse_radius_grid("0:1:0.25")
    extra = _curves.Curve(run="run", method="attack-pgd", k=3, k_prime=1, alpha=0.001, sigma=0.25, n=400,
                         radius=radius, precision=np.linspace(0.9, 0.5, 5), recall=np.linspace(1.0, 0.6, 5),
                         f1=np.linspace(0.95, 0.55, 5), num_inputs=30)
    result = _report.make_report([run_dir], tmp_path / "rep", radius_grid="0:1:0.25", extra_curves=[extra])
    assert any(c.method == "attack-pgd" for c in _curves.read_csv(tmp_path / "rep" / "curves.csv"))
    assert "attack-pgd" in result.summary


def test_plot_figure(run_dir: Path, tmp_path: Path) -> None:
    run = _folder.load_run(run_dir)
    grid = _curves.parse_radius_grid("0:1:0.1")
    rows = [("compare", _curves.compute_curves([run], radius=grid)),
            ("k'", _curves.compute_curves([run], k_prime=[1, 2, 3], methods=["multiguard"], radius=grid))]
    _plots.plot_figure(rows, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes()[:4] == b"\x89PNG"


def test_a_figure_row_may_draw_one_metric_and_leaves_its_other_columns_blank(run_dir: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    curves = _curves.compute_curves([_folder.load_run(run_dir)], radius=_curves.parse_radius_grid("0:1:0.1"))
    _plots.plot_figure([("recall only", curves, ["recall"])], tmp_path / "one.png")
    pixels = imread(tmp_path / "one.png")[..., :3]
    width = pixels.shape[1]
    inked = [float((pixels[:, int(a * width):int(b * width)] < 0.9).mean()) for a, b in ((0, 0.3), (0.4, 0.6),
                                                                                         (0.7, 1))]
    assert inked[0] < 0.002 and inked[2] < 0.002 and inked[1] > 0.02, inked
    with pytest.raises(ValueError, match="rows: row 'none' names no metric"):
        _plots.plot_figure([("none", curves, ["accuracy"])], tmp_path / "none.png")


def test_an_attack_curve_brings_its_gap_to_the_plot_and_results_json(run_dir: Path, tmp_path: Path) -> None:
    """An attack's curve with the certified values of its inputs: results.json's ``attacked`` records carry both
    per radius, and each metric's figure shades the gap (so it differs from the figure without the certified
    values)."""
    import json

    radius = _curves.parse_radius_grid("0:1:0.25")
    certified = {"precision": np.array([0.6, 0.4, 0.2, 0.1, 0.0]), "recall": np.array([0.7, 0.5, 0.3, 0.1, 0.0]),
                 "f1": np.array([0.65, 0.45, 0.25, 0.1, 0.0])}
    common = dict(run="attack", method="attack", k=3, k_prime=1, alpha=0.001, sigma=0.25, n=400, radius=radius,
                  precision=np.linspace(0.9, 0.5, 5), recall=np.linspace(1.0, 0.6, 5), f1=np.linspace(0.95, 0.55, 5),
                  num_inputs=30, violations=np.zeros(5, dtype=np.int64))
    with_gap = _curves.Curve(**common, certified=certified)
    _report.make_report([run_dir], tmp_path / "gap", radius_grid="0:1:0.25", extra_curves=[with_gap])
    document = json.loads((tmp_path / "gap" / "results.json").read_text())
    attacked = document["attacked"]
    assert [r["radius"] for r in attacked] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [r["attacked_recall"] for r in attacked] == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6])
    assert [r["certified_recall"] for r in attacked] == pytest.approx([0.7, 0.5, 0.3, 0.1, 0.0])
    assert {r["violations"] for r in attacked} == {0} and {r["attack"] for r in attacked} == {"attack"}
    assert all(r["method"] != "attack" for r in document["records"])  # the certified records stay certificates

    _report.make_report([run_dir], tmp_path / "nogap", radius_grid="0:1:0.25",
                        extra_curves=[_curves.Curve(**common)])
    assert "attacked" in json.loads((tmp_path / "nogap" / "results.json").read_text())
    for metric in ("precision", "recall", "f1"):
        assert (tmp_path / "gap" / f"{metric}.png").read_bytes() != (tmp_path / "nogap" / f"{metric}.png").read_bytes()
