"""`l2lang eval`: every strategy answers the same items; one JSON line per (strategy, item); resumable.

The results file `DIR/results.jsonl` is appended to one chunk of `batch_size` items at a time. A run
is identified by its settings (model weights, task, seed, token budget, chat, batch size, dtype) and
each strategy by its fingerprint, so re-running the same command skips what is already recorded and
finishes the rest (docs/evaluation.md). Every record names the answer convention it was scored under;
records of an older one are re-scored from their stored text (`rescore_results`), as `--rescore` does
for every record without loading the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from l2lang.apps.progress import item_progress
from l2lang.apps.stats import mcnemar_exact, paired_delta, wilson
from l2lang.apps.tasks import Task
from l2lang.backends.base import Backend
from l2lang.engine.answers import ANSWER_CONVENTION, extract_answer
from l2lang.engine.generation import Generation
from l2lang.engine.strategy import Strategy
from l2lang.errors import L2Error
from l2lang.lang.compose import load_program
from l2lang.paths import write_new


@dataclass
class Arm:
    """One strategy under evaluation: its label as written on the command line, and the loaded strategy."""

    label: str
    strategy: Strategy


def parse_arms(texts: list[str], *, allow_other_model: bool = False) -> list[Arm]:
    """`baseline,alrr:warmup=32,k=1,lrs:n=4` → baseline | alrr with {warmup, k} | lrs with {n}.

    Pieces are split at commas; a piece with `=` and no `:` is one more parameter of the piece before.
    A piece may be a bundle (`policy.l2b`); `allow_other_model` lets bundles run on other weights.
    """
    pieces: list[str] = []
    for text in texts:
        for piece in filter(None, (p.strip() for p in text.split(","))):
            if "=" in piece and ":" not in piece and pieces:
                pieces[-1] += "," + piece
            else:
                pieces.append(piece)
    arms, seen = [], set()
    for piece in pieces:
        if piece in seen:
            raise L2Error.one(f"--strategies: `{piece}` is listed twice", path="<command line>")
        seen.add(piece)
        name, _, params = piece.partition(":")
        overrides = {}
        for item in filter(None, params.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise L2Error.one(f"--strategies: `{item}` in `{piece}` is not k=v", path="<command line>")
            overrides[key.strip()] = value.strip()
        arms.append(Arm(piece, Strategy(load_program(name, overrides, allow_other_model=allow_other_model))))
    if not arms:
        raise L2Error.one("--strategies: name at least one strategy", path="<command line>")
    return arms


def run_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_records(path: Path) -> list[dict]:
    """The recorded lines; a trailing line cut off by an interruption is dropped from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        write_new(path, data)
    records = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not _is_record(record):
            raise L2Error.one("not a results line (a JSON object with the fields l2lang writes); move the file away "
                              "to start afresh", path=f"{path}:{number}")
        records.append(record)
    return records


RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "run": str, "fingerprint": str, "item": str, "strategy": str, "correct": bool, "tokens": int, "generated": int,
    "seconds": (int, float), "interventions": int, "extra_layer_passes": (int, float)}


def _is_record(value: object) -> bool:
    """A results line as `evaluate` writes it: the fields the summary reads, of the right types."""
    if not isinstance(value, dict):
        return False
    for key, kind in RECORD_FIELDS.items():
        if not isinstance(value.get(key), kind) or (kind is int and isinstance(value[key], bool)):
            return False
    return True


def evaluate(backend: Backend, arms: list[Arm], task: Task, out: str | Path, *, seed: int = 0, max_new_tokens: int = 256,
             batch_size: int = 8, chat: bool | None = None, dtype: str = "float32") -> tuple[list[dict], dict]:
    """Answer every item with every arm (skipping what `out/results.jsonl` holds).

    Returns this run's records and its settings (also written to `out/settings.json`).
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.jsonl"
    settings = {"model": backend.model_id, "weights_sha256": backend.weights_sha256, "task": task.spec, "seed": seed,
                "max_new_tokens": max_new_tokens, "chat": chat, "batch_size": batch_size, "dtype": dtype}
    key = run_key(settings)
    for arm in arms:  # every arm's plan is compiled (and refused) before any item is answered
        backend.plan_for(arm.strategy)
    done = {(r["run"], r["fingerprint"], r["item"]) for r in read_records(path)}
    chunks = [task.items[start:start + batch_size] for start in range(0, len(task.items), batch_size)]
    position = {item.id: n for n, item in enumerate(task.items)}  # what the task's scorer is keyed by

    def missing(arm: Arm, chunk: list) -> list:
        return [i for i in chunk if (key, arm.strategy.fingerprint, i.id) not in done]

    # a chunk with any item missing is answered whole (so sampled answers do not depend on where a run
    # was cut), and only its missing items are written
    pending = [(arm, number, chunk) for number, chunk in enumerate(chunks) for arm in arms if missing(arm, chunk)]
    total = sum(len(missing(arm, chunk)) for arm, _, chunk in pending)
    if not total:
        print(f"l2lang: already done: every answer is in {path}", file=sys.stderr)
    with item_progress(total, "eval") as advance, path.open("a", encoding="utf-8") as sink:
        for arm in arms:  # an arm's chunks go to the backend together (vLLM batches them continuously)
            mine = [(number, chunk) for a, number, chunk in pending if a is arm]
            batches = [([i.prompt for i in chunk], seed + number * batch_size) for number, chunk in mine]
            start = time.perf_counter()
            results = backend.generate_chunks(arm.strategy, batches, chat=chat, max_new_tokens=max_new_tokens)
            for (number, chunk), result in zip(mine, results):
                seconds, start = time.perf_counter() - start, time.perf_counter()
                wanted = {i.id for i in missing(arm, chunk)}
                records = _answer(result, seconds, arm, task, chunk, position, run=key)
                sink.write("".join(json.dumps(r) + "\n" for r in records if r["item"] in wanted))
                sink.flush()
                os.fsync(sink.fileno())
                advance(len(wanted))
    settings["run"] = key
    bundles = {arm.label: arm.strategy.program.bundle.record() for arm in arms if arm.strategy.program.bundle}
    if bundles:
        settings["bundles"] = bundles
    write_new(folder / "settings.json", json.dumps(settings, indent=2) + "\n")
    rescore_results(folder, key, task)
    return run_records(folder, key, arms, task), settings


def run_records(folder: str | Path, run: str, arms: list[Arm], task: Task) -> list[dict]:
    """The records of `run` that answer one of `task`'s items with one of `arms`."""
    asked = {(arm.strategy.fingerprint, item.id) for arm in arms for item in task.items}
    return [r for r in read_records(Path(folder) / "results.jsonl")
            if r["run"] == run and (r["fingerprint"], r["item"]) in asked]


def rescore(arms: list[Arm], task: Task, out: str | Path, command: dict) -> tuple[list[dict], dict]:
    """`l2lang eval --rescore`: every record of the run in `out` on `task`'s items re-scored from its text
    (nothing is generated). `command` holds the settings the command line gives (all of `settings.json`
    but the weights' hash); a run made with other settings is refused. Returns the arms' records and the
    run's settings, like `evaluate`."""
    folder = Path(out)
    try:
        settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise L2Error.one("no readable settings.json here: --rescore re-scores a finished run",
                          path=str(folder / "settings.json")) from None
    differ = [f"{name} {value!r} (the run's: {settings.get(name)!r})" for name, value in command.items()
              if settings.get(name) != value]
    if differ:
        raise L2Error.one(f"--rescore: the run in {folder} was made with other settings: {'; '.join(differ)}",
                          path="<command line>", hint="give the command that made the run, with --rescore")
    rescore_results(folder, settings["run"], task, every=True)
    return run_records(folder, settings["run"], arms, task), settings


def rescore_results(folder: str | Path, run: str, task: Task, *, every: bool = False) -> int:
    """Re-score, from their stored texts, the records of `run` on `task`'s items in `folder/results.jsonl`
    that were scored under an older answer convention (or `every` one). The file is replaced atomically.
    Returns how many records changed."""
    path = Path(folder) / "results.jsonl"
    position = {item.id: n for n, item in enumerate(task.items)}
    records, changed = read_records(path), 0
    for n, record in enumerate(records):
        if record["run"] == run and record["item"] in position and (
                every or record.get("convention", 1) < ANSWER_CONVENTION):
            records[n] = rescored(record, task, position[record["item"]])
            changed += records[n] != record
    if changed:
        write_new(path, "".join(json.dumps(r) + "\n" for r in records))
    return changed


def convention_changes(records: list[dict], arms: list[Arm]) -> list[str]:
    """One line per arm with records re-scored from an older convention (`previous`): how many were right
    before and now, how many items were gained and lost, and how many answers read differently."""
    lines = []
    for arm in arms:
        mine = [r for r in records if r["fingerprint"] == arm.strategy.fingerprint]
        older = [r["previous"] for r in mine if "previous" in r]
        if not older:
            continue
        before = sum(r.get("previous", r)["correct"] for r in mine)
        gained = sum(r["correct"] and not r["previous"]["correct"] for r in mine if "previous" in r)
        lost = sum(r["previous"]["correct"] and not r["correct"] for r in mine if "previous" in r)
        read = sum(r["previous"]["extracted"] != r["extracted"] for r in mine if "previous" in r)
        lines.append(f"{arm.label}: {before} of {len(mine)} right under answer convention "
                     f"{min(p['convention'] for p in older)}, {sum(r['correct'] for r in mine)} under "
                     f"{ANSWER_CONVENTION} (+{gained} −{lost}; {read} answers read differently)")
    return lines


def rescored(record: dict, task: Task, index: int) -> dict:
    """`record` re-read from its text under the current answer convention; what a record scored under an
    older convention said is kept under `previous` (convention, extracted, score, correct)."""
    expected = task.items[index].answers[0]
    if record["expected"] != expected:
        raise L2Error.one(f"item {record['item']} was recorded expecting {record['expected']!r}, but the task "
                          f"now expects {expected!r}: its items changed since the run, so it cannot be re-scored",
                          path=task.spec)
    extracted = extract_answer(record["text"])
    score = task.score(index, extracted)
    fresh = {key: value for key, value in record.items() if key != "text"}
    version = record.get("convention", 1)
    if version < ANSWER_CONVENTION:
        fresh["previous"] = {"convention": version, "extracted": record["extracted"], "score": record["score"],
                             "correct": record["correct"]}
    fresh.update(extracted=extracted, score=score, correct=score >= 1.0,
                 task_score=task.own_score(index, extracted), convention=ANSWER_CONVENTION, text=record["text"])
    return fresh


def _answer(result: Generation, seconds: float, arm: Arm, task: Task, items, position: dict[str, int], *,
            run: str) -> list[dict]:
    """One record per item of a chunk, from its generation (which took `seconds`)."""
    per = result.plan.sample.count if result.plan.sample else 1
    requests = result.report.requests
    records = []
    for n, (item, output) in enumerate(zip(items, result.outputs)):
        extracted = extract_answer(output["text"])
        score = task.score(position[item.id], extracted)
        records.append({
            "run": run, "strategy": arm.label, "fingerprint": arm.strategy.fingerprint, "item": item.id,
            "expected": item.answers[0], "extracted": extracted, "score": score, "correct": score >= 1.0,
            "task_score": task.own_score(position[item.id], extracted), "convention": ANSWER_CONVENTION,
            "tokens": len(output["token_ids"]), "generated": sum(result.lengths[n * per:(n + 1) * per]),
            "seconds": seconds / len(items),
            "interventions": sum(len(r["interventions"]) for r in requests[n * per:(n + 1) * per]),
            "extra_layer_passes": sum(r["extra_layer_passes"] for r in requests[n * per:(n + 1) * per]),
            "text": output["text"],
        })
    return records


def summarise(records: list[dict], arms: list[Arm], reference: str | None = None) -> list[dict]:
    """One row per arm: accuracy with its Wilson interval, and deltas and McNemar against the reference arm.

    The reference is the arm labelled `reference`, else the one labelled `baseline`, else the first.
    """
    by_arm = {arm.label: {r["item"]: r for r in records if r["fingerprint"] == arm.strategy.fingerprint}
              for arm in arms}
    reference = reference or next((a.label for a in arms if a.label == "baseline"), arms[0].label)
    rows = []
    for arm in arms:
        mine = by_arm[arm.label]
        n, right = len(mine), sum(r["correct"] for r in mine.values())
        generated = sum(r["generated"] for r in mine.values())
        seconds = sum(r["seconds"] for r in mine.values())
        row = {"strategy": arm.label, "n": n, "correct": right, "accuracy": right / n if n else 0.0,
               "wilson95": wilson(right, n),
               "mean_tokens": sum(r["tokens"] for r in mine.values()) / n if n else 0.0,
               "tokens_per_s": generated / seconds if seconds else 0.0,
               "interventions_per_answer": sum(r["interventions"] for r in mine.values()) / n if n else 0.0,
               "extra_layer_passes_per_token": sum(r["extra_layer_passes"] for r in mine.values()) / generated
               if generated else 0.0}
        if arm.label != reference:
            theirs = by_arm[reference]
            paired = [i for i in mine if i in theirs]
            b = sum(mine[i]["correct"] and not theirs[i]["correct"] for i in paired)
            c = sum(theirs[i]["correct"] and not mine[i]["correct"] for i in paired)
            delta, low, high = paired_delta(b, c, len(paired))
            row.update(paired=len(paired), wins=b, losses=c, delta=delta, delta95=(low, high),
                       mcnemar_p=mcnemar_exact(b, c))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    reference = next(r["strategy"] for r in rows if "delta" not in r)
    lines = [f"| strategy | n | accuracy | Wilson 95 % | Δ vs {reference} (95 %) | wins/losses | McNemar p "
             "| mean tokens | tokens/s | interventions/answer | extra layer passes/token |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["wilson95"]
        if "delta" in r:
            dl, dh = r["delta95"]
            delta = f"{100 * r['delta']:+.1f} ({100 * dl:+.1f}, {100 * dh:+.1f})"
            versus, p = f"{r['wins']}/{r['losses']}", f"{r['mcnemar_p']:.3f}"
        else:
            delta, versus, p = "—", "—", "—"
        lines.append(f"| {r['strategy']} | {r['n']} | {100 * r['accuracy']:.1f} % | {100 * low:.1f}–{100 * high:.1f} "
                     f"| {delta} | {versus} | {p} | {r['mean_tokens']:.1f} | {r['tokens_per_s']:.1f} "
                     f"| {r['interventions_per_answer']:.2f} | {r['extra_layer_passes_per_token']:.2f} |")
    return "\n".join(lines)
