import argparse
import inspect

import pytest

from dsbs import cli


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = f"{prefix} {name}".strip()
                found |= _commands(sub, words) or {words}
    return found


def test_command_table_matches_the_parser():
    assert _commands(cli.build_parser()) == set(cli.COMMANDS)


def test_config_show_prints_resolved_tree(capsys):
    assert cli.main(["config", "show", "train.alpha=0.25"]) == 0
    out = capsys.readouterr().out
    assert "alpha: 0.25" in out and out.startswith("data:")


def test_config_error_exit_code_and_message(capsys):
    assert cli.main(["config", "show", "train.alhpa=0.25"]) == 2
    assert "did you mean 'train.alpha'" in capsys.readouterr().err


def test_data_errors_exit_1(tmp_path, capsys):
    code = cli.main(
        [
            "data",
            "import-paper",
            "--dataset",
            "svamp",
            "--root",
            str(tmp_path),
            "--split",
            "test",
            "--out",
            str(tmp_path / "o.jsonl"),
        ]
    )
    assert code == 1
    assert "no teacher outputs" in capsys.readouterr().err


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["data", "import-paper", "--dataset", "mnist"])
    assert exit_info.value.code == 2


def test_flag_defaults_are_the_config_defaults():
    """A flag that stands for a setting declared elsewhere defaults to that declaration."""
    from dsbs.config import TrainConfig
    from dsbs.data.paper import import_paper
    from dsbs.data.quarantine import MAX_BAD_FRACTION

    parser = cli.build_parser()
    evaluate = parser.parse_args(["evaluate", "--model", "m", "--data", "d"])
    assert evaluate.batch_size == TrainConfig().eval_batch_size
    paper = parser.parse_args(
        [
            "data",
            "import-paper",
            "--dataset",
            "svamp",
            "--root",
            "r",
            "--split",
            "test",
            "--out",
            "o.jsonl",
        ]
    )
    budget = inspect.signature(import_paper).parameters["max_bad_fraction"].default
    assert paper.max_bad_fraction == budget == MAX_BAD_FRACTION


def test_dsbs_errors_become_exit_codes_and_bugs_keep_their_traceback(monkeypatch, capsys):
    """One exception family: each stage's failure is a DsbsError the CLI maps to its status."""
    from dsbs.config import ConfigError
    from dsbs.data.quarantine import BadInputError
    from dsbs.errors import DsbsError, NotFoundError
    from dsbs.generate import GenerationError
    from dsbs.storage import StorageError
    from dsbs.train.trainer import TrainingError

    for error, code in (
        (ConfigError("train.lr: bad"), 2),
        (BadInputError("3 of 4 rows are bad"), 1),
        (GenerationError("over the budget"), 1),
        (TrainingError("no rows"), 1),
        (StorageError("s3://b/k: denied"), 1),
        (NotFoundError("runs/x/train: no completed train output"), 1),
    ):
        assert isinstance(error, DsbsError)

        def fail(args, error=error):
            raise error

        monkeypatch.setitem(cli.COMMANDS, "config show", fail)
        assert cli.main(["config", "show"]) == code
        assert capsys.readouterr().err == f"dsbs: {error.kind}: {error}\n"

    def bug(args):
        raise KeyError("a bug, not a user's error")

    monkeypatch.setitem(cli.COMMANDS, "config show", bug)
    with pytest.raises(KeyError):
        cli.main(["config", "show"])
