"""Where a run directory may be: what is refused before any work starts, and what is not."""

import pytest

from dsbs.cluster import check_run_dir
from dsbs.config import ConfigError


def test_a_relative_run_dir_is_refused_in_a_submitted_job(monkeypatch):
    """Under `ray job submit` the driver's working directory is the job's temporary copy."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"metadata": {}}')
    with pytest.raises(ConfigError, match=r"pipeline.run_dir='runs/demo' is relative"):
        check_run_dir("runs/demo", shared_filesystem=True)
    check_run_dir("s3://bucket/runs/demo", shared_filesystem=False)
    check_run_dir("/data/runs/demo", shared_filesystem=True)


def test_outside_a_job_and_a_cluster_any_run_dir_goes(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_run_dir("runs/demo", shared_filesystem=False)  # starts no Ray: a local cluster is 1 node
