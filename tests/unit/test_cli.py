import argparse

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
    """A flag that stands for a config key defaults to that key's default, declared once."""
    from dsbs.config import DataConfig, TrainConfig

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
    assert paper.max_bad_fraction == DataConfig().max_bad_fraction
