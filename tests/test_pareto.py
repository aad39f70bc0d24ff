"""bench pareto: every setting measured on the same lists; the front, the default."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streams.bench.pareto import DEFAULT, GRID, OBJECTIVES, ParetoOptions, non_dominated, run


def test_the_front_is_the_settings_no_other_setting_beats_everywhere():
    rng = np.random.default_rng(0)
    values = rng.random((40, 3))
    values[7] = values[3]  # a tie: neither dominates the other
    front = set(non_dominated(values).tolist())
    for row in range(len(values)):
        beaten = [
            other
            for other in range(len(values))
            if (values[other] >= values[row]).all() and (values[other] > values[row]).any()
        ]
        assert (row in front) == (not beaten)
    assert {3, 7} <= front or not {3, 7} & front


def test_the_grid_holds_the_default_and_at_most_30_settings():
    assert DEFAULT in GRID and len(GRID) <= 30 and len(set(GRID)) == len(GRID)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("pareto")
    options = ParetoOptions(events=8_000, progress=False, report=out / "p.json", plot=out / "p.png")
    report = run(options)
    assert json.loads(options.report.read_text()) == report
    assert options.plot.stat().st_size > 10_000
    return report


def test_every_setting_is_measured_with_its_standard_errors(report):
    assert len(report["settings"]) == len(GRID) and report["events"] > 100
    for entry, weights in zip(report["settings"], GRID, strict=True):
        assert tuple(entry["weights"]) == weights
        for objective in OBJECTIVES:
            assert entry[objective] > 0 and entry[f"{objective}_se"] > 0


def test_the_front_and_the_default_are_reported_as_measured(report):
    settings = report["settings"]
    values = np.array([[s[o] for o in OBJECTIVES] for s in settings])
    on_front = [settings[i] for i in non_dominated(values)]
    assert sorted(map(tuple, (s["weights"] for s in report["front"]))) == sorted(
        tuple(s["weights"]) for s in on_front
    )
    clicks = [s["clicks"] for s in report["front"]]
    assert clicks == sorted(clicks, reverse=True)
    assert all(s["separation"] >= 0 for s in report["front"][1:])
    default = report["default"]
    assert tuple(default["weights"]) == DEFAULT
    assert default["on_front"] == any(s["weights"] == default["weights"] for s in on_front)
