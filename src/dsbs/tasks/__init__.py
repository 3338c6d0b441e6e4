"""The task library: a registry keyed by name (`TASKS["svamp"]`)."""

from __future__ import annotations

from dsbs.tasks.base import Parsed, Task, accuracy, build_prompt
from dsbs.tasks.cqa import MultipleChoiceTask
from dsbs.tasks.free import FreeLabelTask
from dsbs.tasks.nli import NliTask
from dsbs.tasks.svamp import ArithmeticTask

TASKS: dict[str, Task] = {
    "svamp": ArithmeticTask("svamp"),
    "cqa": MultipleChoiceTask("cqa"),
    "anli1": NliTask("anli1"),
    "esnli": NliTask("esnli"),
    "free": FreeLabelTask("free"),
}


def get_task(name: str) -> Task:
    """The task registered under `name`.

    Raises:
        KeyError: naming the known tasks.
    """
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Parsed", "Task", "accuracy", "build_prompt", "get_task"]
