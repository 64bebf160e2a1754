"""The scoring driver every benchmark shares: SconeEval, OmniContext, PSRBench (semantic alignment, its
geometric metrics and HPSv3) and ShapeWorld each plug in a ``Scorer``, which says for one case what it reads, which
judge requests it makes (none for a geometric judge) and what record it makes of the replies. The driver
runs every unit (sampling round, judging pass, case), concurrently, through the protocol's tries
(``send_case``), turns a case that cannot be scored into a ``failed`` record (never a default score), and
lists the same requests for ``--dry_run`` and the Batch API (``iter_jobs``).

Resume: every finished judgement is in the judge's disk cache, so rerunning the same command after a
kill (or a quota stop) re-issues only the calls that never finished and produces the same tables.
Layout written by ``score_benchmark`` (the benchmarks tabled by eval/aggregation.py) to `--output_dir`:
    round{r}/scoring{s}/score.jsonl     one record per case (scores, reasons, or "failed": reason)
    scores.json / scores.csv / scores.md aggregated tables (eval/aggregation.py)
    usage.jsonl                          one judge usage ledger per run (appended)
    judge_cache/                         default --cache_dir
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from data.benchmark_cases import BenchmarkCase, input_image_paths
from eval.aggregation import aggregate, get_benchmark
from eval.judge.cache import atomic_write_text
from eval.judge.client import JudgeClient, JudgeJob, JudgeResult
from eval.judge.images import load_rgb
from eval.judge.prompts import PromptSet
from eval.judge.rules import OURS, JudgingRules

log = logging.getLogger(__name__)


@dataclass
class Call:
    """One judge request of a case, e.g. "PF", "SC", "DIS/<image>/<subject>" or "semantic"; calls with the
    same `batch` are sent together before their replies are read (PF and SC, as the authors' scorers do)."""

    name: str
    prompt: str
    images: list[Any]  # PIL images, or paths (sent as the files' own bytes with image_format "file")
    parse: Callable[[str], Any]
    batch: int = 0


class Scorer(ABC):
    """How one benchmark scores one case. ``prepare`` raises ValueError naming what cannot be read (the
    case's ``failed`` reason); ``calls`` are its judge requests (none: a geometric judge); ``record`` makes
    the case's record fields of the replies, keyed by call name. A scorer with ``batch_size`` > 1 and no
    judge requests scores its cases in batches instead (``record_batch``: a reward model on a GPU)."""

    batch_size = 1

    def record_batch(self, cases: list, prepared: list) -> list[dict]:
        return [self.record(c, p, {}) for c, p in zip(cases, prepared)]

    def base(self, case: Any, image_dir: Path) -> dict:
        """Fields every record of the case has, scored or failed."""
        return {}

    def prepare(self, case: Any, image_dir: Path) -> Any:
        return None

    def calls(self, case: Any, prepared: Any) -> list[Call]:
        return []

    @abstractmethod
    def record(self, case: Any, prepared: Any, results: dict[str, JudgeResult]) -> dict:
        """The case's record fields (scores, reasons) from its prepared inputs and ``results`` by call name."""

    def failed(self, case: Any, reason: str, result: JudgeResult | None) -> dict:
        """The record of a case that could not be scored (``result``: the judgement that failed, if any)."""
        return {"failed": reason}


@dataclass(frozen=True)
class Unit:
    """One case to score in one sampling round (its images in ``image_dir``) and one judging pass."""

    round: int
    image_dir: Path
    scoring: int
    case: Any

    def tag(self, call: Call) -> str:
        """The judge's log/cache tag of one call: round, judging pass, case and call name."""
        return f"round{self.round}/scoring{self.scoring}/{self.case.uid}/{call.name}"


def make_units(cases: list, dirs: list[tuple[int, Path]], scorings: int = 1) -> list[Unit]:
    """Every (round, judging pass, case), in that order."""
    return [Unit(r, d, s, c) for r, d in dirs for s in range(scorings) for c in cases]


def round_dirs(result_dir: Path, rounds: int | None) -> list[tuple[int, Path]]:
    """[(round index, folder with {task_type}/{key}.png)]. `rounds=None` autodetects `round{i}/` folders
    and falls back to a flat folder (one round, e.g. images written by the upstream scripts)."""
    if rounds is not None:
        dirs = [(i, result_dir / f"round{i}") for i in range(rounds)]
        missing = [str(d) for _, d in dirs if not d.is_dir()]
        if missing:
            raise FileNotFoundError(f"result folders not found: {', '.join(missing)}")
        return dirs
    found = sorted(int(p.name[5:]) for p in result_dir.glob("round*") if p.is_dir() and p.name[5:].isdigit())
    if found:
        if found != list(range(len(found))):
            raise ValueError(f"{result_dir}: round folders {found} are not round0..round{len(found) - 1}")
        return [(i, result_dir / f"round{i}") for i in found]
    if not result_dir.is_dir():
        raise FileNotFoundError(f"result folder not found: {result_dir}")
    return [(0, result_dir)]


# ----------------------------------------------------------------------------- one case
def _batches(calls: list[Call]) -> list[list[Call]]:
    """Calls grouped by ``Call.batch`` in order: a batch is sent whole before its replies are read."""
    out: list[list[Call]] = []
    for call in calls:
        if out and out[-1][0].batch == call.batch:
            out[-1].append(call)
        else:
            out.append([call])
    return out


def send_case(
    client: JudgeClient,
    calls: list[Call],
    tag: Callable[[Call], str],
    scoring: int,
    rules: JudgingRules = OURS,
) -> tuple[dict[str, JudgeResult], dict[str, JudgeResult]]:
    """The protocol's tries of one case -> ({call name: last readable reply}, {call name: last failure}).

    In each try the batches are sent in order (every call of a batch before any reply is read); replies
    are read in call order and an unreadable one ends the try (no later batch is sent). A try whose
    replies all read ends the case unless ``rules.every_try`` (OmniGen2's loop without a ``break``)."""
    results: dict[str, JudgeResult] = {}
    errors: dict[str, JudgeResult] = {}
    for k in range(rules.tries):
        complete = True
        for batch in _batches(calls):
            replies = [
                client.judge(c.prompt, c.images, c.parse, scoring_round=scoring, tag=tag(c), send=k)
                for c in batch
            ]
            for call, res in zip(batch, replies):
                if not res.ok:
                    errors[call.name], complete = res, False
                    break
                results[call.name] = res
            if not complete:
                break
        if complete and not rules.every_try:
            break
    return results, errors


def score_unit(unit: Unit, scorer: Scorer, client: JudgeClient | None, rules: JudgingRules = OURS) -> dict:
    """The record of one unit: ``scorer.base`` fields plus its scores, or plus ``failed`` with the reason."""
    base = scorer.base(unit.case, unit.image_dir)
    try:
        prepared = scorer.prepare(unit.case, unit.image_dir)
    except ValueError as e:
        return {**base, **scorer.failed(unit.case, str(e), None)}
    calls = scorer.calls(unit.case, prepared)
    results: dict[str, JudgeResult] = {}
    if calls:
        if client is None:
            raise ValueError("this scorer makes judge requests: it needs a judge client")
        results, errors = send_case(client, calls, unit.tag, unit.scoring, rules)
        for call in calls:
            if call.name not in results:
                res = errors.get(call.name) or next(iter(errors.values()))
                reason = f"{call.name}: {res.error} (after {res.attempts} attempt(s))"
                return {**base, **scorer.failed(unit.case, reason, res)}
    return {**base, **scorer.record(unit.case, prepared, results)}


def score_units(
    units: list[Unit],
    scorer: Scorer,
    client: JudgeClient | None = None,
    rules: JudgingRules = OURS,
    *,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "score",
) -> list[dict]:
    """Records of ``units``, in their order. Units run concurrently (``workers``; default: the client's
    concurrency, or one without a client); the client's semaphore bounds the requests actually in flight.
    Raises JudgeFatalError on quota/auth stops after cancelling pending work (finished judgements are
    cached)."""
    if scorer.batch_size > 1:
        return _score_batches(units, scorer, progress, desc)
    workers = workers or (client.settings.max_concurrency if client is not None else 1)
    records: list[dict] = []
    bar = tqdm(total=len(units), desc=desc, disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(score_unit, u, scorer, client, rules) for u in units]
        try:
            for f in futures:
                records.append(f.result())
                bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            bar.close()
    return records


def _score_batches(units: list[Unit], scorer: Scorer, progress: bool, desc: str) -> list[dict]:
    """``score_units`` for a batched scorer: the units that prepare go through ``record_batch`` in chunks."""
    records: list[dict | None] = [None] * len(units)
    ready: list[tuple[int, Any]] = []
    for i, u in enumerate(units):
        try:
            ready.append((i, scorer.prepare(u.case, u.image_dir)))
        except ValueError as e:
            records[i] = {**scorer.base(u.case, u.image_dir), **scorer.failed(u.case, str(e), None)}
    starts = range(0, len(ready), scorer.batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, dynamic_ncols=True):
        chunk = ready[s : s + scorer.batch_size]
        out = scorer.record_batch([units[i].case for i, _ in chunk], [p for _, p in chunk])
        for (i, _), rec in zip(chunk, out):
            records[i] = {**scorer.base(units[i].case, units[i].image_dir), **rec}
    return records


def iter_jobs(units: list[Unit], scorer: Scorer, rules: JudgingRules = OURS) -> Iterator[JudgeJob | None]:
    """Every judge request ``score_units`` makes when every reply reads, in its order, as a ``JudgeJob``
    (all tries with ``rules.every_try``, else the first); ``None`` once per unit that cannot be prepared
    (it makes no request). For ``--dry_run`` and the Batch API (eval/judge/run_modes.py, eval/judge/batch.py)."""
    for unit in units:
        try:
            prepared = scorer.prepare(unit.case, unit.image_dir)
        except ValueError:
            yield None
            continue
        for call in scorer.calls(unit.case, prepared):
            for k in range(rules.tries if rules.every_try else 1):
                yield JudgeJob(
                    call.prompt,
                    call.images,
                    call.parse,
                    scoring_round=unit.scoring,
                    tag=unit.tag(call),
                    send=k,
                )


def batch_jobs(
    units: list[Unit],
    scorer: Scorer,
    rules: JudgingRules,
    client: JudgeClient,
    unusable: Callable[[str], bool] = lambda key: False,
) -> Iterator[JudgeJob]:
    """The requests the Batch API should hold for ``units`` now. Without whole-case tries (our protocol,
    OmniGen2's fixed sends) every request of ``iter_jobs``. With them (Scone's scorer): per unit, every
    request of its first try none of whose requests was answered ``unusable`` (a try with such a reply
    cannot complete, so the next try sends the whole case again, as their loop does)."""
    if rules.tries == 1 or rules.every_try:
        yield from (j for j in iter_jobs(units, scorer, rules) if j is not None)
        return
    for unit in units:
        try:
            prepared = scorer.prepare(unit.case, unit.image_dir)
        except ValueError:
            continue
        calls = scorer.calls(unit.case, prepared)
        for k in range(rules.tries):
            jobs = [
                JudgeJob(c.prompt, c.images, c.parse, scoring_round=unit.scoring, tag=unit.tag(c), send=k)
                for c in calls
            ]
            if not any(
                unusable(client.prepare(j.prompt, j.images, j.scoring_round, send=k)[0]) for j in jobs
            ):
                yield from jobs
                break


# ----------------------------------------------------------------------------- SconeEval-shaped benchmarks
def read_case_images(
    case: BenchmarkCase, benchmark_dir: Path, image_dir: Path, rules: JudgingRules = OURS
) -> tuple[list[Image.Image], Image.Image]:
    """(references prepared as the protocol does, the generated image) of one case in one round's folder.
    ValueError names what cannot be read (the case's "failed" reason)."""
    try:
        refs = [rules.prepare_reference(p) for p in input_image_paths(case, benchmark_dir)]
    except (OSError, ValueError) as e:
        raise ValueError(f"reference image: {e}") from None
    out_path = output_image_path(case, image_dir)
    if not out_path.is_file():
        raise ValueError("missing output image")
    try:
        return refs, load_rgb(out_path)
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable output image: {e}") from None


def output_image_path(case: BenchmarkCase, image_dir: Path) -> Path:
    return image_dir / case.task_type / f"{case.key}.png"


# build_calls(case, refs (prepared, RGB), output image, prompts, rules) -> calls
CallBuilder = Callable[[BenchmarkCase, list[Image.Image], Image.Image, PromptSet, JudgingRules], list[Call]]
# make_record(case, {call name: JudgeResult}) -> record fields (PF_score, SC_score, DIS_pred, reasons...)
RecordMaker = Callable[[BenchmarkCase, dict[str, JudgeResult]], dict]


class JudgedCaseScorer(Scorer):
    """A case judged from its references and generated image (SconeEval, OmniContext): the benchmark gives
    ``build_calls`` and ``make_record``, the protocol the prompts and the rules."""

    def __init__(
        self,
        benchmark_dir: Path,
        prompts: PromptSet,
        build_calls: CallBuilder,
        make_record: RecordMaker,
        rules: JudgingRules = OURS,
    ):
        self.benchmark_dir, self.prompts, self.rules = Path(benchmark_dir), prompts, rules
        self.build_calls, self.make_record = build_calls, make_record

    def base(self, case: BenchmarkCase, image_dir: Path) -> dict:
        base = {"key": case.key, "task_type": case.task_type, "instruction": case.instruction}
        if case.subject_label is not None:
            base["subject_label"] = case.subject_label
        base["output_image_path"] = str(output_image_path(case, image_dir))
        return base

    def prepare(self, case: BenchmarkCase, image_dir: Path) -> tuple[list[Image.Image], Image.Image]:
        return read_case_images(case, self.benchmark_dir, image_dir, self.rules)

    def calls(self, case: BenchmarkCase, prepared) -> list[Call]:
        refs, output = prepared
        return self.build_calls(case, refs, output, self.prompts, self.rules)

    def record(self, case: BenchmarkCase, prepared, results: dict[str, JudgeResult]) -> dict:
        return self.make_record(case, results)


def score_benchmark(
    bench_name: str,
    units: list[Unit],
    scorer: Scorer,
    output_dir: Path | None = None,
    client: JudgeClient | None = None,
    rules: JudgingRules = OURS,
    progress: bool = True,
) -> tuple[dict, dict[tuple[int, int], list[dict]]]:
    """Score every unit, write each (round, pass) group's records to
    ``output_dir/round{r}/scoring{s}/score.jsonl`` -> (their tables (eval/aggregation.py), the records by
    group)."""
    bench = get_benchmark(bench_name)
    records = score_units(units, scorer, client, rules, progress=progress, desc=f"score {bench.name}")
    groups: dict[tuple[int, int], list[dict]] = {}
    for u, rec in zip(units, records):
        groups.setdefault((u.round, u.scoring), []).append(rec)
    if output_dir is not None:
        for (r, s), recs in groups.items():
            lines = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in recs)
            atomic_write_text(Path(output_dir) / f"round{r}" / f"scoring{s}" / "score.jsonl", lines)
    return aggregate(groups, bench), groups
