"""What `l2lang eval` writes next to its results: `summary.json`, `results.md` and `report.html` (with a bar chart)."""

from __future__ import annotations

import base64
import io
import json
import textwrap
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from l2lang.apps.evaluate import markdown_table
from l2lang.paths import write_new


def write_report(rows: list[dict], settings: dict, folder: str | Path) -> None:
    folder = Path(folder)
    table = markdown_table(rows)
    write_new(folder / "summary.json", json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    write_new(folder / "results.md", f"{_caption(settings)}\n\n{table}\n")
    environment = Environment(loader=PackageLoader("l2lang", "templates"), autoescape=select_autoescape(["html"]))
    html = environment.get_template("eval.html").render(
        settings=settings, rows=rows, chart=base64.b64encode(_bar_chart(rows, settings)).decode(),
        reference=next(r["strategy"] for r in rows if "delta" not in r))
    write_new(folder / "report.html", html)


def _caption(settings: dict) -> str:
    return (f"{settings['task']} on {settings['model']}, seed {settings['seed']}, "
            f"≤ {settings['max_new_tokens']} new tokens, {settings['dtype']}")


def _bar_chart(rows: list[dict], settings: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(4.8, 1.2 + 1.1 * len(rows))
    figure, axis = plt.subplots(figsize=(width, 3.6))
    accuracy = [100 * r["accuracy"] for r in rows]
    errors = [[max(0.0, 100 * (r["accuracy"] - r["wilson95"][0])) for r in rows],  # never below 0: matplotlib
              [max(0.0, 100 * (r["wilson95"][1] - r["accuracy"])) for r in rows]]  # refuses negative error bars
    axis.bar(range(len(rows)), accuracy, yerr=errors, capsize=4, color="#4a7ab5")
    axis.set_xticks(range(len(rows)), [r["strategy"] for r in rows], rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("accuracy, % (95 % Wilson)")
    axis.set_ylim(0, 100)
    axis.set_title(textwrap.fill(_caption(settings), width=int(width * 12)), fontsize=9)  # ~12 characters an inch
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
