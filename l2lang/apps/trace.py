"""`l2lang trace`: what the norm does inside a model, token by token and layer by layer.

Writes to a folder: `norms.jsonl` and `norms.csv` (one row per token: its phase, step and the norm
after every layer), `heatmap.png` (layers × tokens, with the threshold contour and the intervention
marks), `report.html` (self-contained; each token coloured by its late-layer norm, interventions
marked; generated text is escaped; both figures) and `fig1.png` (mean norm per layer of a step-by-step
answer vs a direct answer to the first prompt, as in Fig. 1 of the paper).

A norm that is not finite (a state that overflowed) is written as `null` in norms.jsonl, `inf` or `nan`
in norms.csv, drawn grey in the heatmap and left out of the means and colours.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from l2lang.backends.base import Backend
from l2lang.engine.generation import Generation
from l2lang.engine.strategy import Strategy, observe_only
from l2lang.lang.compose import Program
from l2lang.paths import write_new

STEP_BY_STEP = " Think step by step, then give the answer."
DIRECT = " Give only the answer, with no explanation."


def trace(backend: Backend, program: Program, prompts: list[str], out: str | Path, *, max_new_tokens: int = 64,
          chat: bool | None = None, seed: int = 0) -> dict:
    """Run `program` with every layer observed; write the trace files; return a summary."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result = backend.generate(Strategy(program), prompts, seed=seed, chat=chat, max_new_tokens=max_new_tokens,
                              observe_all=True)
    rows = token_rows(result, backend)
    _write_tables(rows, folder, result.plan.layers)
    thresholds = _threshold_by_layer(result.plan)
    heatmap = _heatmap(rows, result, thresholds, folder / "heatmap.png")
    fig1 = _fig1(backend, prompts[0], folder / "fig1.png", max_new_tokens, chat, seed)
    _report(rows, result, prompts, heatmap, fig1, folder / "report.html")
    return {"tokens": len(rows), "requests": len(prompts), "folder": str(folder),
            "interventions": result.report.interventions}


def token_rows(result: Generation, backend: Backend) -> list[dict]:
    """One row per observed token: the prompt's positions, then each generated token fed back."""
    rows = []
    for request, output in enumerate(result.outputs):
        marks: dict[int, set[str]] = {}
        for mark in result.report.requests[request]["interventions"]:
            marks.setdefault(mark["step"], set()).add(f"{mark['action']}@{mark['layer']}")
        mine = result.rows[request]
        prompt = iter(result.prompt_ids[request])
        generated = iter(output["token_ids"])
        for phase, step, norms in zip(mine.phases, mine.steps, mine.norms.tolist()):
            token = next(prompt if phase == "prefill" else generated, None)
            if token is None:
                break
            rows.append({"request": request, "phase": phase, "step": step, "token": backend.decode([token]),
                         "norms": [round(v, 4) for v in norms], "marks": sorted(marks.get(step, ())) if
                         phase == "decode" else []})
    return rows


def _write_tables(rows: list[dict], folder: Path, layers: int) -> None:
    finite = ({**row, "norms": [v if math.isfinite(v) else None for v in row["norms"]]} for row in rows)
    write_new(folder / "norms.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in finite))
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["request", "phase", "step", "token", "marks"] + [f"layer_{i}" for i in range(layers)])
    for row in rows:
        writer.writerow([row["request"], row["phase"], row["step"], row["token"], " ".join(row["marks"])]
                        + row["norms"])
    write_new(folder / "norms.csv", table.getvalue())


def _threshold_by_layer(plan) -> dict[int, float]:
    """The first non-adaptive threshold's value per layer (adaptive ones move and are not drawn)."""
    for threshold in plan.thresholds.values():
        if threshold.source != "adaptive" and threshold.values:
            return dict(threshold.values)
    return {}


def _heatmap(rows: list[dict], result, thresholds: dict[int, float], path: Path) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    requests = sorted({row["request"] for row in rows})
    figure, axes = plt.subplots(len(requests), 1, figsize=(12, 3.2 * len(requests)), squeeze=False)
    for axis, request in zip(axes[:, 0], requests):
        mine = [row for row in rows if row["request"] == request and row["phase"] == "decode"]
        if not mine:
            continue
        grid = np.ma.masked_invalid(np.array([row["norms"] for row in mine]).T)  # layers x tokens
        if grid.count() == 0:
            axis.set_title(f"request {request}: no finite norm to draw", fontsize=9)
            continue
        colours = plt.get_cmap("magma").with_extremes(bad="#999999")  # grey: not finite
        low, high = max(float(grid.min()), 1e-3), max(float(grid.max()), 2e-3)
        image = axis.imshow(grid, aspect="auto", origin="lower", cmap=colours,  # log: massive activations
                            norm=LogNorm(vmin=min(low, high / 2), vmax=high))
        figure.colorbar(image, ax=axis, label="norm")
        if thresholds and grid.shape[1] >= 2:  # a contour needs two tokens at least
            tau = np.array([thresholds.get(layer, np.nan) for layer in range(grid.shape[0])])[:, None]
            above = np.ma.masked_invalid(grid - tau)
            if above.count() and above.min() < 0 < above.max():
                axis.contour(above, levels=[0.0], colors="cyan", linewidths=0.8)
        for x, row in enumerate(mine):
            for mark in row["marks"]:
                axis.plot(x, int(mark.rsplit("@", 1)[1]), marker="x", color="lime", markersize=5)
        axis.set_ylabel("layer")
        grey = "; grey: not finite" if np.ma.count_masked(grid) else ""
        axis.set_title(f"request {request}: norm after each layer, per generated token "
                       f"(cyan: threshold; x: interventions{grey})", fontsize=9)
    axes[-1, 0].set_xlabel("generated token")
    return _save(figure, path)


def _fig1(backend: Backend, prompt: str, path: Path, max_new_tokens: int, chat: bool | None, seed: int) -> bytes:
    import matplotlib.pyplot as plt
    import torch

    figure, axis = plt.subplots(figsize=(6, 4))
    for suffix, label in ((STEP_BY_STEP, "step-by-step answer"), (DIRECT, "direct answer")):
        result = backend.generate(Strategy(observe_only()), [prompt + suffix], seed=seed, chat=chat,
                                  max_new_tokens=max_new_tokens)
        mine = result.rows[0]
        decode = mine.norms[[i for i, phase in enumerate(mine.phases) if phase == "decode"]].double()
        if not len(decode):
            continue
        finite = torch.isfinite(decode)
        means = (torch.where(finite, decode, 0).sum(dim=0) / finite.sum(dim=0)).tolist()  # nan: none finite
        axis.plot(range(len(means)), means, marker="o", markersize=3, label=f"{label} ({len(decode)} tokens)")
    axis.set_xlabel("layer")
    axis.set_ylabel("mean norm over generated tokens")
    axis.set_title(f"{backend.model_id}: norm vs depth", fontsize=10)
    if axis.lines:
        axis.legend()
    return _save(figure, path)


def _report(rows: list[dict], result, prompts: list[str], heatmap: bytes, fig1: bytes, path: Path) -> None:
    plan = result.plan
    late = list(range(plan.layers - plan.layers // 4, plan.layers - 1)) or [plan.layers - 1]
    decode = [row for row in rows if row["phase"] == "decode"]
    scores = [sum(row["norms"][layer] for layer in late) / len(late) for row in decode]
    finite = [s for s in scores if math.isfinite(s)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    for row, score in zip(decode, scores):
        if math.isfinite(score):
            row["heat"] = (score - low) / (high - low) if high > low else 0.5
            row["late_norm"] = round(score, 2)
        else:  # drawn at full colour; the hover says what it was
            row["heat"], row["late_norm"] = 1.0, f"{score} (not finite)"
    environment = Environment(loader=PackageLoader("l2lang", "templates"), autoescape=select_autoescape(["html"]))
    html = environment.get_template("report.html").render(
        plan=plan, prompts=prompts, requests=[[r for r in decode if r["request"] == i] for i in range(len(prompts))],
        late=f"{late[0]}..{late[-1]}", interventions=result.report.interventions,
        heatmap=base64.b64encode(heatmap).decode(), fig1=base64.b64encode(fig1).decode())
    write_new(path, html)


def _save(figure, path: Path) -> bytes:
    """Write a figure as PNG to `path`; its bytes (for embedding in the HTML report)."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_new(path, buffer.getvalue())
    return buffer.getvalue()
