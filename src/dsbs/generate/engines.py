"""The teacher engines the generate stage knows, and what it does for each (`teacher.engine`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dsbs.config import TeacherConfig
from dsbs.teachers.base import Teacher


def _serve_client(cfg: TeacherConfig, app_name: str) -> Teacher:
    from dsbs.generate.caller import ServeTeacher
    from dsbs.generate.deployment import DEPLOYMENT_NAME

    return ServeTeacher(app_name, DEPLOYMENT_NAME, cfg)


def _openai_client(cfg: TeacherConfig, app_name: str) -> Teacher:
    from dsbs.teachers.openai import OpenAITeacher

    return OpenAITeacher(cfg)


@dataclass(frozen=True)
class TeacherEngine:
    """What the generate stage does for one `teacher.engine`."""

    deployed: bool
    """Runs as dsbs's own Serve deployment, which the stage starts (and deletes afterwards
    unless teacher.keep_running); otherwise the teacher is an endpoint someone else runs."""
    client: Callable[[TeacherConfig, str], Teacher]
    """Builds a caller's client inside its actor: (teacher section, Serve app name)."""


TEACHERS: dict[str, TeacherEngine] = {
    "vllm": TeacherEngine(deployed=True, client=_serve_client),
    "openai": TeacherEngine(deployed=False, client=_openai_client),
}
"""The teacher engines by `teacher.engine` (a test ties the config's choices to these keys)."""
