from pathlib import Path

import pytest

from dsbs.config import VALID_KEYS, Config, ConfigError, dump_config, load_config, parse_override

REPO = Path(__file__).resolve().parents[2]


def test_defaults_validate_and_every_section_is_present():
    cfg = load_config()
    assert isinstance(cfg, Config)
    for section in ("data", "teacher", "generate", "student", "train", "serve", "pipeline"):
        assert section in VALID_KEYS
    assert cfg.train.alpha == 0.5


def test_precedence_default_then_yaml_then_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  alpha: 0.3\n  zero_stage: 3\n")
    cfg = load_config(path, ["train.alpha=0.7"])
    assert cfg.train.alpha == 0.7  # override beats file
    assert cfg.train.zero_stage == 3  # file beats default
    assert cfg.train.num_workers == 2  # default


def test_override_values_are_yaml_typed():
    assert parse_override("train.use_gpu=true") == ("train.use_gpu", True)
    # YAML 1.1 reads 1e-3 as text; the typed field still gets a float.
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3
    assert parse_override("student.model=s3://b/k") == ("student.model", "s3://b/k")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.alpha")


def test_unknown_key_in_file_names_key_file_and_closest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  alhpa: 0.3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "'train.alhpa'" in message and "'train.alpha'" in message


def test_unknown_section_and_misplaced_leaf(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  alpha: 0.3\n")
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(path)
    path.write_text("zero_stage: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'train.zero_stage'"):
        load_config(path)


def test_unknown_key_in_override():
    with pytest.raises(ConfigError, match=r"override 'teacher.modle=x'.*'teacher.model'"):
        load_config(None, ["teacher.modle=x"])


def test_invalid_value_names_dotted_key_and_origin(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  zero_stage: 7\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train.zero_stage"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override 'train.alpha=2': train.alpha"):
        load_config(None, ["train.alpha=2"])


def test_cross_field_rules_name_their_key():
    with pytest.raises(
        ConfigError, match="override 'train.precision=fp16': train.precision: fp16 is"
    ):
        load_config(None, ["train.precision=fp16"])
    with pytest.raises(ConfigError, match="serve.min_replicas"):
        load_config(None, ["serve.min_replicas=3", "serve.max_replicas=2"])
    with pytest.raises(ConfigError, match="teacher.base_url"):
        load_config(None, ["teacher.engine=openai"])
    with pytest.raises(ConfigError, match="train.offload_param"):
        load_config(None, ["train.offload_param=true", "train.zero_stage=2"])


def test_non_mapping_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["train.alpha=0.25", "serve.port=9000"])
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_every_shipped_config_loads():
    # configs/serve/ holds Ray Serve config files (checked in test_serve_api.py).
    configs = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "serve")
    assert configs, "configs/ holds no YAML files"
    for path in configs:
        assert path.read_text().startswith("#"), f"{path} must start with the command that runs it"
        load_config(path)


def test_every_field_has_a_docstring():
    # The tree is the reference users read (`dsbs config show`); undocumented keys rot.
    for section_name, field in Config.model_fields.items():
        section = field.annotation
        for name, leaf in section.model_fields.items():  # type: ignore[union-attr]
            assert leaf.description, f"{section_name}.{name} has no docstring"


def test_a_run_names_the_papers_setting_it_trains_in():
    from dsbs.pipeline import describe_setting

    def setting(*overrides: str) -> str:
        return describe_setting(load_config(None, list(overrides)))

    assert setting("train.label_source=gold") == (
        "distilling step-by-step with gold labels and the teacher's rationales"
    )
    gated = (
        "generate.num_samples=5",
        "teacher.temperature=0.7",
        "generate.require_gold_match=true",
    )
    assert setting(*gated) == (
        "distilling step-by-step with the teacher's labels and rationales, self-consistency "
        "over 5 samples, only rows where the teacher's label matches gold"
    )
    assert setting("train.mode=standard_finetune").startswith("standard finetuning")
    assert setting("train.mode=standard_distill") == (
        "standard distillation with teacher labels, no rationales"
    )


def test_the_configs_name_literals_are_the_registries_keys():
    """A task, preset or backend added to its registry is a valid config value, and only then."""
    from typing import get_args

    from dsbs.config import ServeConfig, StudentPreset, TaskName
    from dsbs.serve.backends import BACKENDS
    from dsbs.student.presets import PRESETS
    from dsbs.tasks import TASKS

    assert set(get_args(TaskName)) == set(TASKS)
    assert set(get_args(StudentPreset)) == set(PRESETS)
    assert set(get_args(ServeConfig.model_fields["backend"].annotation)) == set(BACKENDS)


def test_the_student_serve_config_file_is_a_valid_serve_section():
    """configs/serve/student.yaml lists only what differs from the defaults, and all of it valid."""
    import yaml

    from dsbs.config import ServeConfig

    document = yaml.safe_load((REPO / "configs" / "serve" / "student.yaml").read_text())
    args = document["applications"][0]["args"]
    defaults = ServeConfig().model_dump()
    cfg = ServeConfig.model_validate(args)
    assert [key for key in args if args[key] == defaults[key]] == []
    assert cfg.model and cfg.max_replicas > cfg.min_replicas


def test_every_config_key_says_whether_it_changes_a_stage_output():
    """Each section's keys split exactly into OUTPUT_KEYS and RUN_KEYS (rundir.stage_hash)."""
    from dsbs.config import Config

    for name, field in Config.model_fields.items():
        section = field.annotation
        keys = set(section.model_fields)
        assert keys == section.OUTPUT_KEYS | section.RUN_KEYS, (name, keys - section.OUTPUT_KEYS)
        assert not section.OUTPUT_KEYS & section.RUN_KEYS, name


def test_a_stage_hash_follows_output_keys_and_ignores_run_keys():
    from dsbs.config import TrainConfig
    from dsbs.rundir import stage_hash

    digest = stage_hash({"train": TrainConfig()}, {"version": 1})
    assert stage_hash({"train": TrainConfig(max_failures=9, eval_max_rows=5)}, {"version": 1}) == (
        digest
    )
    assert stage_hash({"train": TrainConfig(lr=1e-5)}, {"version": 1}) != digest
    assert stage_hash({"train": TrainConfig()}, {"version": 2}) != digest


def test_every_teacher_engine_the_config_accepts_has_an_entry():
    from typing import get_args

    from dsbs.config import TeacherConfig
    from dsbs.generate.engines import TEACHERS

    assert set(get_args(TeacherConfig.model_fields["engine"].annotation)) == set(TEACHERS)
