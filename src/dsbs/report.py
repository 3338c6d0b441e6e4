"""The run's report: `metrics.json`, PNG plots and an `index.html` that shows them.

    RUN/report/metrics.json     teacher, student, losses, throughput, stage timings
    RUN/report/loss.png         training loss per task over steps (validation as markers)
    RUN/report/accuracy.png     validation label accuracy over steps
    RUN/report/sweep.png        accuracy against training-set size per mode (sweeps only)
    RUN/report/index.html       the above with the config, readable offline

Plots are drawn with matplotlib's Agg backend (no display) and written through `storage`, so
a report on s3:// is the same files.
"""

from __future__ import annotations

import html
import io
import json
import logging
from collections.abc import Sequence
from typing import Any

from dsbs import storage

log = logging.getLogger(__name__)


def write_report(
    report_dir: str,
    metrics: dict[str, Any],
    history: Sequence[dict[str, Any]],
    config_yaml: str,
    sweep: Sequence[dict[str, Any]] = (),
) -> list[str]:
    """Writes the report files; returns their names.

    Args:
        report_dir: RUN/report (local or s3://).
        metrics: the run's figures (nested dicts of numbers and strings).
        history: training rows from metrics.jsonl (`split` train/valid/test, `step`, losses).
        config_yaml: the resolved config, shown on the page.
        sweep: for sweeps, one row per run with `mode`, `fraction` and `test_accuracy`.
    """
    files = {"metrics.json": (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode()}
    plots = {
        "loss.png": _loss_plot(history),
        "accuracy.png": _accuracy_plot(history),
        "sweep.png": _sweep_plot(sweep) if sweep else None,
    }
    files.update({name: png for name, png in plots.items() if png is not None})
    images = [name for name, png in plots.items() if png is not None]
    files["index.html"] = _page(metrics, images, config_yaml).encode()
    for name, payload in files.items():
        storage.write_bytes(storage.join(report_dir, name), payload)
    log.info("report written to %s", storage.join(report_dir, "index.html"))
    return sorted(files)


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 4.0), dpi=100)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _series(history: Sequence[dict[str, Any]], split: str, key: str) -> tuple[list, list]:
    rows = [r for r in history if r.get("split") == split and r.get(key) is not None]
    return [r["step"] for r in rows], [r[key] for r in rows]


def _loss_plot(history: Sequence[dict[str, Any]]) -> bytes | None:
    keys = [k for k in ("label_loss", "rationale_loss") if _series(history, "train", k)[0]]
    if not keys:
        return None
    fig, ax = _figure()
    for key, color in zip(keys, ("tab:blue", "tab:orange"), strict=False):
        ax.plot(*_series(history, "train", key), color=color, label=f"train {key}")
        steps, values = _series(history, "valid", key)
        if steps:
            ax.plot(steps, values, "o--", color=color, label=f"valid {key}")
    ax.set(xlabel="step", ylabel="cross-entropy (token mean)", title="Loss per task")
    ax.legend()
    return _png(fig)


def _accuracy_plot(history: Sequence[dict[str, Any]]) -> bytes | None:
    steps, values = _series(history, "valid", "label_accuracy")
    if not steps:
        return None
    fig, ax = _figure()
    ax.plot(steps, values, "o-", color="tab:green")
    ax.set(xlabel="step", ylabel="label accuracy", title="Validation accuracy", ylim=(0, 1))
    return _png(fig)


def sweep_means(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, float], float]:
    """Mean test accuracy over seeds per (mode, fraction), in the sweep's order."""
    sums: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        if row["test_accuracy"] is not None:
            sums.setdefault((row["mode"], row["fraction"]), []).append(row["test_accuracy"])
    return {key: sum(values) / len(values) for key, values in sums.items()}


def _sweep_plot(sweep: Sequence[dict[str, Any]]) -> bytes:
    # The paper's figure: each mode's mean over seeds against the share of training rows,
    # each seed's own result as a faint dot, and the teacher on the same rows as a line.
    fig, ax = _figure()
    means = sweep_means(sweep)
    for index, mode in enumerate(dict.fromkeys(r["mode"] for r in sweep)):
        color = f"C{index}"
        points = sorted((f, a) for (m, f), a in means.items() if m == mode)
        ax.plot(
            [100 * f for f, _ in points],
            [100 * a for _, a in points],
            "o-",
            color=color,
            label=mode,
        )
        seeded = [r for r in sweep if r["mode"] == mode and r.get("test_accuracy") is not None]
        if len({r.get("seed") for r in seeded}) > 1:
            ax.scatter(
                [100 * r["fraction"] for r in seeded],
                [100 * r["test_accuracy"] for r in seeded],
                color=color,
                alpha=0.3,
                s=14,
            )
    teacher = [
        r["teacher_test_accuracy"] for r in sweep if r.get("teacher_test_accuracy") is not None
    ]
    if teacher:
        ax.axhline(
            100 * sum(teacher) / len(teacher),
            color="grey",
            linestyle="--",
            label="teacher (same test rows)",
        )
    seeds = len({r.get("seed") for r in sweep})
    ax.set(
        xlabel="training set used (%)",
        ylabel="test accuracy (%)",
        title="Accuracy against training-set size"
        + (f" (mean of {seeds} seeds)" if seeds > 1 else ""),
        ylim=(0, 100),
    )
    ax.legend()
    return _png(fig)


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in sorted(tree.items()):
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(json.dumps(value) if isinstance(value, list) else str(value))


def percent(value: float | None) -> str:
    """A share as a percentage with one decimal (`61.2%`), or `n/a`."""
    return "n/a" if value is None else f"{value:.1%}"


def _headline(metrics: dict[str, Any]) -> str:
    """Teacher against student on the same test rows, the setting, and the smoke-test answers."""
    student = metrics.get("student")
    if not student:
        return ""
    rows = student.get("test_rows") or 0
    answers = "\n".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            html.escape(str(a.get("input", ""))),
            html.escape(str(a.get("label", ""))),
            html.escape(str(a.get("gold") or "")),
            {True: "right", False: "wrong"}.get(a.get("correct"), ""),
        )
        for a in metrics.get("smoke_test", [])
    )
    teacher = percent(student.get("teacher_test_accuracy"))
    learned = percent(student.get("test_accuracy"))
    return f"""<h2>Teacher and student on the same {rows} held-out test rows</h2>
<table>
<tr><td>teacher (its labels in the generated data)</td><td>{teacher}</td></tr>
<tr><td>student after {student.get("steps")} steps</td><td>{learned}</td></tr>
</table>
<p>Setting: {html.escape(str(metrics.get("setting", "")))}</p>
<h3>Smoke test over HTTP</h3>
<table>
<tr><td>input</td><td>student's answer</td><td>gold</td><td></td></tr>
{answers}
</table>"""


def _page(metrics: dict[str, Any], images: list[str], config_yaml: str) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(key)}</td><td>{_cell(value)}</td></tr>"
        for key, value in _flatten(metrics)
    )
    figures = "\n".join(f'<img src="{name}" alt="{name}">' for name in images)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dsbs run report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1400px; }}
table {{ border-collapse: collapse; }} td {{ border: 1px solid #ccc; padding: 2px 8px; }}
img {{ max-width: 640px; margin: 8px; border: 1px solid #eee; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>dsbs run report</h1>
{_headline(metrics)}
<h2>Plots</h2>
{figures}
<h2>Metrics</h2>
<table>
{rows}
</table>
<h2>Config</h2>
<pre>{html.escape(config_yaml)}</pre>
</body></html>
"""
