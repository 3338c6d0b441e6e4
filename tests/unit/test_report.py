"""The run report: metrics, plots and a page that shows them, without Ray."""

import json

import pytest

from dsbs.report import sweep_means, write_report

HISTORY = [
    {"split": "train", "step": 1, "label_loss": 3.0, "rationale_loss": 4.0},
    {"split": "train", "step": 2, "label_loss": 2.5, "rationale_loss": 3.5},
    {"split": "valid", "step": 2, "label_loss": 2.7, "rationale_loss": 3.6, "label_accuracy": 0.1},
    {"split": "resume", "step": 2, "optimizer_steps": 2},
    {"split": "test", "step": 2, "label_accuracy": 0.2},
]


def test_report_holds_metrics_plots_and_a_page_with_the_config(tmp_path):
    metrics = {"student": {"test_accuracy": 0.2, "steps": 2}, "smoke_test": [{"label": "<b>"}]}
    sweep = [
        {"mode": "standard_finetune", "fraction": 0.5, "test_accuracy": 0.1},
        {"mode": "standard_finetune", "fraction": 1.0, "test_accuracy": 0.2},
        {"mode": "distill_step_by_step", "fraction": 1.0, "test_accuracy": 0.3},
    ]
    names = write_report(str(tmp_path), metrics, HISTORY, "train:\n  alpha: 0.5 # <x>\n", sweep)
    assert names == ["accuracy.png", "index.html", "loss.png", "metrics.json", "sweep.png"]
    for png in ("accuracy.png", "loss.png", "sweep.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    page = (tmp_path / "index.html").read_text()
    assert '<img src="loss.png"' in page and '<img src="sweep.png"' in page
    assert "student.test_accuracy" in page and "0.2" in page
    # Model output and config text are escaped, never markup.
    assert "<b>" not in page and "&lt;x&gt;" in page


def test_a_run_without_validation_has_no_accuracy_plot(tmp_path):
    names = write_report(str(tmp_path), {"steps": 1}, HISTORY[:2], "")
    assert "accuracy.png" not in names and "loss.png" in names


def test_the_page_opens_with_teacher_and_student_on_the_same_test_rows(tmp_path):
    metrics = {
        "student": {"test_accuracy": 0.6, "teacher_test_accuracy": 0.15, "test_rows": 40},
        "setting": "distilling step-by-step with gold labels and the teacher's rationales",
        "smoke_test": [
            {"input": "1 + <2>?", "label": "( 1.0 + 2.0 )", "gold": "3", "correct": True}
        ],
    }
    write_report(str(tmp_path), metrics, HISTORY, "")
    page = (tmp_path / "index.html").read_text()
    head = page[: page.index("<h2>Plots</h2>")]
    assert "same 40 held-out test rows" in head
    assert "15.0%" in head and "60.0%" in head and "gold labels and the teacher" in head
    assert "1 + &lt;2&gt;?" in head and "right" in head


def test_sweep_means_average_each_mode_and_fraction_over_seeds_and_the_plot_draws_them(tmp_path):
    from dsbs.pipeline import SweepSummary

    def row(mode, fraction, seed, accuracy):
        return {
            "mode": mode,
            "fraction": fraction,
            "seed": seed,
            "test_accuracy": accuracy,
            "teacher_test_accuracy": 0.1,
        }

    sweep = [
        row("standard_finetune", 0.5, 0, 0.2),
        row("standard_finetune", 1.0, 0, 0.4),
        row("distill_step_by_step", 1.0, 0, 0.5),
        row("standard_finetune", 0.5, 1, 0.3),
        row("standard_finetune", 1.0, 1, 0.6),
        row("distill_step_by_step", 1.0, 1, None),  # a training without a test split
    ]
    assert sweep_means(sweep) == pytest.approx(
        {
            ("standard_finetune", 0.5): 0.25,
            ("standard_finetune", 1.0): 0.5,
            ("distill_step_by_step", 1.0): 0.5,
        }
    )
    line = SweepSummary("r/index.html", sweep).line()
    assert line == (
        "sweep: 6 trainings (2 seeds); test accuracy at 100.0% of the training rows: "
        "standard_finetune 50.0%, distill_step_by_step 50.0%; teacher 10.0%; report r/index.html"
    )
    write_report(str(tmp_path), {}, [], "", sweep)
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
