"""scripts/make_s2i_parquet.py: your own images + JSONL -> Scone-S2I parquet + parquet_info + data mix that
train.pretrain reads; bad lines reported with file and line, good ones kept."""

from __future__ import annotations

import importlib.util
import io
import json

import pyarrow.parquet as pq
from PIL import Image

from tests.conftest import ROOT
from tests.test_train_loop import args_for, losses

spec = importlib.util.spec_from_file_location("make_s2i_parquet", ROOT / "scripts" / "make_s2i_parquet.py")
conv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conv)


def make_inputs(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        Image.new("RGB", (48 + 16 * i, 64), colour).save(images / f"im{i}.png")
    Image.new("RGB", (40, 40), (9, 9, 9)).save(images / "im4.bmp")  # re-encoded as PNG
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "secret.png").write_bytes((images / "im0.png").read_bytes())
    good = [
        {"references": ["im0.png", "im1.png"], "target": "im2.png", "instruction": "The red from image 1 and the green from image 2."},
        {"references": ["im3.png"], "target": "im0.png", "instruction": "The yellow from image 1."},
        {"references": ["im4.bmp"], "target": "im1.png", "instruction": "The dark one from image 1."},
    ]  # fmt: skip
    lines = [json.dumps(good[0]), "{not json", json.dumps({"references": [], "target": "im0.png", "instruction": "x"}),
             json.dumps({"references": ["../secret.png"], "target": "im0.png", "instruction": "x"}),
             json.dumps(good[1]), json.dumps({"references": ["gone.png"], "target": "im0.png", "instruction": "x"}),
             json.dumps({"references": ["broken.png"], "target": "im0.png", "instruction": "x"}),
             json.dumps({"references": ["im0.png"], "target": "im1.png", "instruction": "  "}), "", json.dumps(good[2])]  # fmt: skip
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    return images, jsonl, good


def test_converter_reports_bad_lines_and_writes_the_s2i_layout(tmp_path, caplog):
    images, jsonl, good = make_inputs(tmp_path)
    out = tmp_path / "data"
    rc = conv.main(["--images", str(images), "--jsonl", str(jsonl), "--out", str(out), "--name", "mine",
                    "--rows_per_file", "2", "--rows_per_group", "1", "--max_image_size", "64", "--min_image_size", "32"])  # fmt: skip
    assert rc == 1  # some lines were bad, the good ones are written
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    for line, reason in [(2, "not JSON"), (3, "'references' must be"), (4, "outside"), (6, "not found"),
                         (7, "not readable"), (8, "non-empty 'instruction'")]:  # fmt: skip
        assert any(e.startswith(f"{jsonl}:{line}: ") and reason in e for e in errors), (line, errors)
    assert len(errors) == 6
    files = sorted((out / "parquet_data" / "mine").glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert [r["instruction"] for r in rows] == [g["instruction"] for g in good]
    assert len(rows[0]["image"]) == 3 and Image.open(io.BytesIO(rows[0]["image"][2])).size == (
        80,
        64,
    )  # target last
    assert Image.open(io.BytesIO(rows[2]["image"][0])).format == "PNG"  # the BMP was re-encoded
    info = json.loads((out / "parquet_info" / "mine.json").read_text())
    assert sorted(info) == [str(f) for f in files] and info[str(files[0])]["num_row_groups"] == 2
    assert (out / "mine.yaml").is_file()


def test_the_written_mix_trains_a_lora_adapter(tmp_path):
    images, jsonl, _ = make_inputs(tmp_path)
    out = tmp_path / "data"
    conv.main(["--images", str(images), "--jsonl", str(jsonl), "--out", str(out), "--name", "mine",
               "--rows_per_group", "1", "--max_image_size", "64", "--min_image_size", "32"])  # fmt: skip
    from train.pretrain import train

    run = tmp_path / "run"
    train(args_for(run, "--dataset_config_file", str(out / "mine.yaml"), "--data_root", str(out), "--num_workers", "1",
                   "--expected_num_tokens", "300", "--max_num_tokens", "700", "--max_num_tokens_per_sample", "700",
                   "--prefer_buffer_before", "200", "--total_steps", "2", "--lora_rank", "2"))  # fmt: skip
    assert sorted(losses(run)) == [0, 1]
    assert (run / "ckpt" / "0000001" / "adapter_model.safetensors").is_file()


def test_nothing_usable_is_exit_2(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("{oops\n")
    assert conv.main(["--images", str(images), "--jsonl", str(jsonl), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    assert (
        conv.main(["--images", str(tmp_path / "none"), "--jsonl", str(jsonl), "--out", str(tmp_path / "o")])
        == 2
    )


def test_train_lora_script_runs_and_its_adapter_loads(tmp_path):
    import os
    import subprocess

    from tests.test_train_loop import CKPT

    images, jsonl, _ = make_inputs(tmp_path)
    out = tmp_path / "data"
    conv.main(["--images", str(images), "--jsonl", str(jsonl), "--out", str(out), "--name", "mine",
               "--rows_per_group", "1", "--max_image_size", "64", "--min_image_size", "32"])  # fmt: skip
    env = {**os.environ, "MODEL_PATH": CKPT, "DATA_YAML": str(out / "mine.yaml"), "DATA_ROOT": str(out),
           "EXP_NAME": "t", "TOTAL_STEPS": "2", "TOKENS": "700", "LORA_RANK": "2", "OMP_NUM_THREADS": "1"}  # fmt: skip
    r = subprocess.run(["bash", str(ROOT / "scripts" / "train_lora.sh"), "--device", "cpu", "--num_workers", "1",
                        "--activation_checkpointing", "False"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    step = tmp_path / "ckpts" / "t" / "0000001"
    assert json.loads((step / "adapter_config.json").read_text())["r"] == 2
    from inference.pipeline import SconePipeline

    pipe = SconePipeline.from_pretrained(CKPT, lora=str(step))
    assert pipe.generate(images=[], prompt="x", seed=0, height=32, width=32, num_timesteps=2).image.size == (
        32,
        32,
    )
