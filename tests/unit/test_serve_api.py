"""The serving API without Ray: request checking, error shapes, and the shipped Serve config."""

import json
from pathlib import Path

import pytest
import yaml

from dsbs.config import ServeConfig
from dsbs.serve.api import Rejection, check_lengths, field_name, parse_request

REPO = Path(__file__).resolve().parents[2]
CFG = ServeConfig(max_items=4, max_body_bytes=2000, max_input_tokens=10)


@pytest.mark.parametrize(
    ("raw", "status", "field", "reason"),
    [
        (b"{not json", 400, "body", "invalid_json"),
        (b"\xff\xfe", 400, "body", "invalid_json"),
        (b"[1, 2]", 422, "body", "invalid_field"),
        (b"null", 422, "body", "invalid_field"),
        (b"{}", 422, "inputs", "invalid_field"),
        (b'{"inputs": "one string"}', 422, "inputs", "invalid_field"),
        (b'{"inputs": []}', 422, "inputs", "invalid_field"),
        (b'{"inputs": ["a", 3]}', 422, "inputs[1]", "invalid_field"),
        (b'{"inputs": ["a", null]}', 422, "inputs[1]", "invalid_field"),
        (b'{"inputs": ["a", "  "]}', 422, "inputs[1]", "empty_input"),
        (b'{"inputs": ["a"], "rationale": "yes"}', 422, "rationale", "invalid_field"),
        (b'{"inputs": ["a"], "extra": 1}', 422, "extra", "invalid_field"),
        (json.dumps({"inputs": ["a"] * 5}).encode(), 422, "inputs", "too_many_items"),
        (json.dumps({"inputs": ["a" * 3000]}).encode(), 413, "body", "body_too_large"),
    ],
)
def test_each_malformed_request_is_refused_naming_its_field(raw, status, field, reason):
    with pytest.raises(Rejection) as caught:
        parse_request(raw, CFG)
    rejection = caught.value
    assert (rejection.status, rejection.field, rejection.reason) == (status, field, reason)
    assert rejection.body()["error"]["field"] == field and rejection.message


def test_a_good_request_parses():
    request = parse_request(b'{"inputs": ["What is 2 plus 3?"], "rationale": true}', CFG)
    assert request.inputs == ["What is 2 plus 3?"] and request.rationale is True


def test_inputs_over_the_token_limit_are_named():
    check_lengths([3, 10], CFG, trained=256)
    with pytest.raises(Rejection) as caught:
        check_lengths([3, 11, 12], CFG, trained=256)
    assert caught.value.field == "inputs[1]" and caught.value.reason == "input_too_long"


def test_the_limit_is_never_past_what_the_student_was_trained_on():
    """serve.max_input_tokens 512 against an export trained on 256: 257-511 were cut silently."""
    cfg = ServeConfig(max_input_tokens=512)
    check_lengths([256], cfg, trained=256)
    with pytest.raises(Rejection) as caught:
        check_lengths([300], cfg, trained=256)
    assert caught.value.status == 422
    assert "serve.max_input_tokens 512" in caught.value.message
    assert "trained on inputs of up to 256" in caught.value.message


def test_field_names_read_like_paths():
    assert field_name(("inputs", 3)) == "inputs[3]"
    assert field_name(("a", "b", 0)) == "a.b[0]"
    assert field_name(()) == "body"


def test_rejections_survive_pickling():
    # Replicas return them through Ray handles.
    import pickle

    original = Rejection(422, "inputs[0]", "too long", "input_too_long")
    rejection = pickle.loads(pickle.dumps(original))  # noqa: S301 - our own object
    assert rejection.body()["error"] == {
        "field": "inputs[0]",
        "message": "too long",
        "reason": "input_too_long",
    }


def test_the_shipped_serve_config_is_a_valid_serve_config_with_dsbs_args():
    from ray.serve.schema import ServeDeploySchema

    from dsbs.serve.app import autoscaling_config

    for path in sorted((REPO / "configs" / "serve").glob("*.yaml")):
        assert path.read_text().startswith("#")
        doc = yaml.safe_load(path.read_text())
        schema = ServeDeploySchema.model_validate(doc)
        for app in schema.applications:
            assert app.import_path == "dsbs.serve.app:build_app"
            cfg = ServeConfig.model_validate(app.args)  # every arg is a `serve` key
            assert cfg.model
            scaling = autoscaling_config(cfg)
            assert scaling["min_replicas"] <= scaling["max_replicas"]


def test_build_app_needs_a_model():
    from dsbs.serve.app import build_app

    with pytest.raises(ValueError, match="serve.model"):
        build_app({"backend": "hf"})
