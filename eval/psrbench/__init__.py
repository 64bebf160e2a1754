"""PSRBench evaluation (7 subsets x 50 multi-subject cases): case reader, subject consistency
(Grounding DINO crops + DINO ViT-S/16 cosine), geometric position alignment, VLM semantic alignment,
HPSv3 aesthetics and the report. See docs/psrbench.md."""

from data.psrbench_cases import SUBSET_SUBJECTS, SUBSETS, Case, load_psrbench_cases, write_results_json

__all__ = ["SUBSETS", "SUBSET_SUBJECTS", "Case", "load_psrbench_cases", "write_results_json"]
