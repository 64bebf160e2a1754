"""Tiny random Grounding DINO + DINO ViT built from configs, saved with save_pretrained and loaded back
through the real loading / pre-processing / crop / feature code (no downloads)."""

import json
import math

import pytest
import torch
from PIL import Image

from data.psrbench_cases import case_output_path, load_psrbench_cases, write_results_json
from eval.psrbench.detection import GroundingDinoDetector
from eval.psrbench.evaluate import main as evaluate_main
from eval.psrbench.features import DinoFeatureExtractor, dino_preprocess
from eval.psrbench.subject_consistency import subject_consistency
from tests.synthetic_psrbench import make_synthetic_psrbench

transformers = pytest.importorskip("transformers")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "cat", "dog", "teddy", "bear", "backpack"]


def build_tiny_detector(path):
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer(str(path / "vocab.txt"))
    # small resize so CPU tests stay fast (protocol: 800/1333; the detector logs the difference)
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 160})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    swin = SwinConfig(
        image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
        out_indices=[2, 3, 4],
    )  # fmt: skip
    bert = BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64,
    )  # fmt: skip
    config = GroundingDinoConfig(
        backbone_config=swin, text_config=bert, num_queries=12, encoder_layers=1, decoder_layers=2, d_model=32,
        encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_n_points=2, decoder_n_points=2, max_text_len=32,
    )  # fmt: skip
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    return path


def build_tiny_vit(path):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(1)
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return build_tiny_detector(root / "gdino"), build_tiny_vit(root / "dino")


def noise_image(w, h, seed, mode="RGB"):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr).convert(mode)


def direct_boxes(path, image, caption, threshold):
    """Reference: the model run by hand, boxes kept in query order, cxcywh -> xyxy in pixels."""
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    proc = AutoProcessor.from_pretrained(path)
    model = GroundingDinoForObjectDetection.from_pretrained(path).eval()
    with torch.no_grad():
        out = model(**proc(images=image, text=caption, return_tensors="pt"))
    scores = out.logits.sigmoid().max(-1).values[0]
    keep = scores > threshold
    w, h = image.size
    boxes = []
    for (cx, cy, bw, bh), s in zip(out.pred_boxes[0][keep].tolist(), scores[keep].tolist()):
        boxes.append(([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], s))
    return boxes


def test_detector_matches_hand_run_model_in_query_order(tiny_models):
    det_path, _ = tiny_models
    img = noise_image(80, 50, 0)
    det = GroundingDinoDetector(str(det_path), box_threshold=0.0)
    boxes = det.detect(img, "  Cat ")  # caption normalised to "cat."
    ref = direct_boxes(det_path, img, "cat.", 0.0)
    assert len(boxes) == len(ref) == 12  # threshold 0: every decoder query
    for b, (xyxy, s) in zip(boxes, ref):
        assert b.as_list() == pytest.approx(xyxy, abs=1e-3) and b.score == pytest.approx(s, abs=1e-5)
    scores = [b.score for b in boxes]
    assert scores != sorted(scores, reverse=True)  # not re-sorted by score
    # RGBA input: the detector sees the RGB image (upstream crashed and fell back)
    assert [b.as_list() for b in det.detect(img.convert("RGBA"), "cat")] == [b.as_list() for b in boxes]
    # the protocol threshold keeps the subset above 0.35, same order
    strict = GroundingDinoDetector(str(det_path))
    assert strict.box_threshold == 0.35 and strict.text_threshold == 0.25
    assert [b.score for b in strict.detect(img, "cat")] == pytest.approx([s for s in scores if s > 0.35])


def test_feature_extractor_is_normed_cls_of_preprocessed_image(tiny_models):
    _, vit_path = tiny_models
    fx = DinoFeatureExtractor(str(vit_path), batch_size=2)
    imgs = [noise_image(50, 70, 1), noise_image(300, 200, 2, "L"), noise_image(31, 17, 3, "RGBA")]
    emb = fx.embed(imgs)
    assert emb.shape == (3, 24)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        cls = fx.model(pixel_values=dino_preprocess(imgs[1])[None]).last_hidden_state[0, 0]
    assert torch.allclose(emb[1], cls / cls.norm(), atol=1e-5)


@pytest.mark.parametrize("categories", [["cat", "dog"], ["cat", "dog", "cat"], ["dog", "bear", "dog", "dog"]])
def test_sc_equals_straightforward_per_case_computation(tiny_models, categories):
    det_path, vit_path = tiny_models
    det = GroundingDinoDetector(str(det_path), box_threshold=0.0)
    fx = DinoFeatureExtractor(str(vit_path))
    gen = noise_image(96, 64, 10)
    refs = [noise_image(40 + 8 * k, 48, 20 + k) for k in range(len(categories))]
    res = subject_consistency(gen, refs, categories, det, fx)

    sims = []
    for k, cat in enumerate(categories):
        j = categories[:k].count(cat)  # k-th repeat of a category takes the k-th box
        x1, y1, x2, y2 = (int(v) for v in det.detect(gen, cat)[j].as_list())
        g = gen.crop((max(x1, 0), max(y1, 0), min(x2, gen.width), min(y2, gen.height)))
        x1, y1, x2, y2 = (int(v) for v in det.detect(refs[k], cat)[0].as_list())
        r = refs[k].crop((max(x1, 0), max(y1, 0), min(x2, refs[k].width), min(y2, refs[k].height)))
        if g.width == 0 or g.height == 0:
            g = gen
        if r.width == 0 or r.height == 0:
            r = refs[k]
        a, b = fx.embed([g])[0], fx.embed([r])[0]
        sims.append(float(a @ b / (a.norm() * b.norm())))
    assert res.similarities == pytest.approx(sims, abs=1e-5)
    assert res.score == pytest.approx(sum(sims) / len(sims), abs=1e-5)
    assert len(res.crops) == 2 * len(categories)


def test_evaluate_cli_end_to_end_with_tiny_models(tiny_models, tmp_path, monkeypatch):
    det_path, vit_path = tiny_models
    root = make_synthetic_psrbench(tmp_path / "PSRBench", subsets=("Position", "Three"), n_per_subset=2)
    cases = load_psrbench_cases(root, ["Position", "Three"])
    monkeypatch.chdir(tmp_path)
    for i, c in enumerate(cases[:-1]):  # last case: no generated image
        p = case_output_path(c, "outputs")
        p.parent.mkdir(parents=True, exist_ok=True)
        noise_image(64, 64, 100 + i).save(p)
    write_results_json(cases, "outputs")
    rc = evaluate_main(
        [
            "--data_root", str(root), "--results_dir", "outputs", "--subsets", "Position", "Three",
            "--metrics", "sc", "position", "aesthetics", "--device", "cpu", "--detector", str(det_path),
            "--feature_model", str(vit_path), "--no_progress",
        ]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((tmp_path / "outputs/eval/summary.json").read_text())
    per_case = [
        json.loads(line) for line in (tmp_path / "outputs/eval/per_case.jsonl").read_text().splitlines()
    ]
    assert len(per_case) == 4 and per_case[-1]["error"].startswith("no result_path")
    pos, three = summary["subsets"]["Position"], summary["subsets"]["Three"]
    assert pos["sc_n"] == 2 and three["sc_n"] == 1 and three["n_missing_output"] == 1
    assert pos["sc_crops"] == 8 and three["sc_crops"] == 6
    assert pos["position_n"] + pos["position_no_relation"] == 2 and three["position_n"] == 0
    assert per_case[0]["position"]["relation"] == "to the left of"
    for r in per_case[:3]:
        assert -1.0 <= r["sc"]["score"] <= 1.0 and math.isfinite(r["sc"]["score"])
    assert summary["overall"]["skipped"]["aesthetics"].startswith(("the hpsv3 package", "HPSv3 needs"))
    assert summary["overall"]["skipped"]["semantic"] == "not requested (--metrics)"
    md = (tmp_path / "outputs/eval/summary.md").read_text()
    assert "| Position | 2 | 0 |" in md and "aesthetics: skipped:" in md
    csv_lines = (tmp_path / "outputs/eval/summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("subset,n_cases") and [ln.split(",")[0] for ln in csv_lines[1:]] == [
        "Position",
        "Three",
        "Overall",
    ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu(tiny_models):
    det_path, vit_path = tiny_models
    gen = noise_image(96, 64, 10)
    refs = [noise_image(48, 40, 11), noise_image(40, 56, 12)]
    out = {}
    for device in ("cpu", "cuda"):
        det = GroundingDinoDetector(str(det_path), device=device, box_threshold=0.0)
        fx = DinoFeatureExtractor(str(vit_path), device=device)
        out[device] = subject_consistency(gen, refs, ["cat", "cat"], det, fx)
        assert fx.embed([gen]).device.type == "cpu"
    assert out["cuda"].similarities == pytest.approx(out["cpu"].similarities, abs=1e-3)
    assert [c.n_boxes for c in out["cuda"].crops] == [c.n_boxes for c in out["cpu"].crops]
