"""scripts/tiny/reference_swap.py: recolouring a case, and the whole diagnostic on the shipped tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from data.synthetic.make_shapeworld import make_shapeworld
from data.synthetic.shapeworld import case_from_record, render_case

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def swap():
    spec = importlib.util.spec_from_file_location(
        "reference_swap", ROOT / "scripts" / "tiny" / "reference_swap.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("swapworld")
    make_shapeworld(str(out), 0, 12, 0)  # 2 composition_single cases
    return out / "bench"


def test_recoloured_changes_reference_and_target_together(swap, bench):
    record = next(
        json.loads(x) for x in (bench / "data.jsonl").read_text().splitlines() if "composition_single" in x
    )
    before = json.dumps(record, sort_keys=True)
    for shift in range(1, 7):
        new = swap.recoloured(record, shift)
        case, old_case = case_from_record(new), case_from_record(record)
        assert case.targets[0].subject.colour != old_case.targets[0].subject.colour
        ref = case.references[case.targets[0].ref_index].placements[case.targets[0].candidate_index]
        assert ref.subject == case.targets[0].subject  # the reference shows what the target asks for
        assert case.instruction == old_case.instruction  # composition instructions do not name colours
        assert render_case(case)[0][0].tobytes() != render_case(old_case)[0][0].tobytes()
    assert json.dumps(record, sort_keys=True) == before  # the original record is untouched
    assert (
        swap.recoloured(record, 7)["shapeworld"]["targets"][0]["colour"]
        == record["shapeworld"]["targets"][0]["colour"]
    )  # the palette has 7 colours


def test_diagnostic_runs_on_the_shipped_model(swap, bench, tmp_path, capsys):
    rc = swap.main(
        [
            "--model_path",
            str(ROOT / "ckpts" / "scone-tiny"),
            "--bench_dir",
            str(bench),
            "--work",
            str(tmp_path),
        ]
    )
    assert rc == 0
    summary = json.loads((tmp_path / "reference_swap.json").read_text())
    assert summary["cases"] == 2
    for key in ("colour_right_original", "colour_right_recoloured", "output_colour_changed"):
        assert 0.0 <= summary[key] <= 1.0
    assert json.loads(capsys.readouterr().out) == summary
    with pytest.raises(SystemExit, match="no composition_single"):
        swap.main(
            ["--model_path", "x", "--bench_dir", str(bench), "--work", str(tmp_path), "--num_cases", "0"]
        )
