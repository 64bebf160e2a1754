"""PSRBench case reader and results-JSON writer."""

import json
from pathlib import Path

import pytest
from PIL import Image

from data.psrbench_cases import (
    SUBSETS,
    case_output_path,
    load_psrbench_cases,
    resolve_inside,
    resolve_result_path,
    write_results_json,
)
from tests.synthetic_psrbench import make_synthetic_psrbench


def _write(root: Path, subset: str, records: list) -> None:
    (root / f"{subset}.json").write_text(json.dumps(records), encoding="utf-8")


def test_loads_all_seven_subsets_in_order(tmp_path):
    root = make_synthetic_psrbench(tmp_path / "PSRBench", n_per_subset=2)
    cases = load_psrbench_cases(root)
    assert [c.subset for c in cases] == [s for s in SUBSETS for _ in range(2)]
    three = [c for c in cases if c.subset == "Three"][1]
    assert three.id == three.key == "1" and three.id_field is None and three.index == 1
    assert three.task_type == "Three" and three.uid == "Three/1" and three.output_relpath == "Three/1.png"
    assert three.categories == ("dog", "teddy bear", "backpack") and three.n_subjects == 3
    assert three.input_images == tuple(root / p for p in three.input_relpaths)
    assert all(p.is_file() for p in three.input_images)
    assert three.path_field == "input_path" and three.result_path is None


def test_subset_filter_and_both_path_field_spellings(tmp_path):
    root = make_synthetic_psrbench(tmp_path, subsets=("Four", "Action"), path_field="input_paths")
    cases = load_psrbench_cases(root, ["Four", "Action"])
    assert [c.subset for c in cases] == ["Action", "Action", "Four", "Four"]  # benchmark order
    assert {c.path_field for c in cases} == {"input_paths"}
    with pytest.raises(FileNotFoundError, match="Attribute.json"):
        load_psrbench_cases(root)  # all seven requested, one missing
    with pytest.raises(ValueError, match="unknown PSRBench subset"):
        load_psrbench_cases(root, ["Five"])


def test_explicit_ids_are_used_and_checked(tmp_path):
    root = make_synthetic_psrbench(tmp_path, subsets=("Action",))
    recs = json.loads((root / "Action.json").read_text())
    recs[0]["id"], recs[1]["id"] = "a_07", 12
    _write(root, "Action", recs)
    assert [c.id for c in load_psrbench_cases(root, ["Action"])] == ["a_07", "12"]
    recs[1]["id"] = "a_07"
    _write(root, "Action", recs)
    with pytest.raises(ValueError, match="duplicate sample ids"):
        load_psrbench_cases(root, ["Action"])
    recs[1]["id"] = "../evil"
    _write(root, "Action", recs)
    with pytest.raises(ValueError, match="not usable as a file name"):
        load_psrbench_cases(root, ["Action"])


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda r: r.update(input_path=["../outside.png", r["input_path"][1]]), "escapes data_root"),
        (lambda r: r.update(input_path=["subjects/../../x.png", r["input_path"][1]]), "escapes data_root"),
        (lambda r: r.update(input_path=["/etc/passwd", r["input_path"][1]]), "absolute"),
        (lambda r: r.update(input_path=["C:\\x.png", r["input_path"][1]]), "absolute"),
        (lambda r: r.pop("category2"), "category2"),
        (lambda r: r.update(category3="lamp"), "category3"),
        (lambda r: r.update(input_path=r["input_path"][:1]), "has 2 subjects"),
        (lambda r: r.update(input_paths=list(reversed(r["input_path"]))), "both present and different"),
        (lambda r: r.pop("input_path"), "no reference paths"),
        (lambda r: r.update(instruction=""), "instruction"),
        (lambda r: r.update(input_path=["subjects/missing.png", r["input_path"][1]]), "not found"),
    ],
)
def test_bad_records_raise_naming_file_and_record(tmp_path, mutate, error):
    root = make_synthetic_psrbench(tmp_path, subsets=("Attribute",))
    recs = json.loads((root / "Attribute.json").read_text())
    mutate(recs[1])
    _write(root, "Attribute", recs)
    with pytest.raises((ValueError, FileNotFoundError), match=error) as info:
        load_psrbench_cases(root, ["Attribute"])
    assert "Attribute.json[1]" in str(info.value)


def test_resolve_inside_accepts_nested_relative_paths(tmp_path):
    assert resolve_inside(tmp_path, "subjects/a/b.png", "x") == tmp_path / "subjects/a/b.png"
    with pytest.raises(ValueError):
        resolve_inside(tmp_path, "", "x")


def test_write_results_json_layout_and_round_trip(tmp_path, monkeypatch):
    root = make_synthetic_psrbench(tmp_path / "PSRBench", subsets=("Position", "Three"), n_per_subset=3)
    cases = load_psrbench_cases(root, ["Position", "Three"])
    monkeypatch.chdir(tmp_path)
    out = Path("outputs")  # relative, as in PSR's README
    for c in cases:
        if not (c.subset == "Three" and c.id == "2"):  # one image missing
            p = case_output_path(c, out)
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(p)
    written = write_results_json(cases, out)
    assert written["Position"].path == out / "Position.json" and written["Position"].n_missing == 0
    assert written["Three"].n_missing == 1 and written["Three"].n_cases == 3
    entries = json.loads((out / "Three.json").read_text())
    assert entries[0]["result_path"] == "outputs/Three/0.png" and entries[2]["id"] == "2"
    assert "result_path" not in entries[2]
    assert entries[1]["category3"] == cases[4].categories[2]  # original fields carried through
    assert not list(out.glob("*.tmp"))

    again = load_psrbench_cases(root, ["Position", "Three"], json_dir=out)
    assert [c.result_path for c in again][:2] == ["outputs/Position/0.png", "outputs/Position/1.png"]
    assert resolve_result_path(again[0], tmp_path) == tmp_path / "outputs/Position/0.png"
    assert resolve_result_path(again[-1]) is None
    assert [c.id for c in again] == [c.id for c in cases] and again[0].id_field == "id"
    with pytest.raises(FileNotFoundError, match="Three/2"):
        write_results_json(cases, out, tmp_path / "other", require_outputs=True)
    # a partial selection (not a prefix) keeps its ids through the results file
    write_results_json([cases[4]], tmp_path / "partial")
    assert [c.id for c in load_psrbench_cases(root, ["Three"], json_dir=tmp_path / "partial")] == ["1"]


def test_results_files_are_checked_against_the_benchmark(tmp_path):
    from data.psrbench_cases import check_results_against_benchmark
    from eval.psrbench.report import summarize, to_markdown

    root = make_synthetic_psrbench(tmp_path / "bench", subsets=("Background", "Position"), n_per_subset=3)
    results = tmp_path / "results"
    results.mkdir()
    bg = json.loads((root / "Background.json").read_text())
    pos = json.loads((root / "Position.json").read_text())
    bg = bg[:2] + [{**bg[0], "instruction": "an extra case", "id": "99"}]
    pos[0]["category1"] = "Dog"  # an edited record
    pos[1] = {"instruction": ""}  # a malformed one: fails that record, not the run
    (results / "Background.json").write_text(json.dumps(bg))
    (results / "Position.json").write_text(json.dumps(pos))
    benchmark = load_psrbench_cases(root, ["Background", "Position"])
    errors: list[str] = []
    got = load_psrbench_cases(
        root, ["Background", "Position"], json_dir=results, check_files=False, errors=errors
    )
    assert len(errors) == 1 and "Position.json[1]" in errors[0]
    kept, cov = check_results_against_benchmark(benchmark, got)
    assert cov["benchmark_cases"] == 6 and cov["scored_cases"] == len(kept) == 3  # bg 0, 1 and pos 2
    assert cov["missing"] == ["Background/2", "Position/1"]  # the malformed record counts as missing
    assert cov["extra"] == ["Background/99"] and cov["edited"] == ["Position/0"]
    md = to_markdown(summarize([], {"coverage": {**cov, "malformed": errors}}))
    assert "Scored 3 of the benchmark's 6 cases." in md and "1 edited" in md and "1 malformed" in md
