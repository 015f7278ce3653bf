"""Settings precedence as a table: explicit argument > OVERDRIVE_* env > ACCELERATE_* env > default."""

from __future__ import annotations

import pytest

from overdrive.settings import SETTINGS, parse_bool, resolve

CASES = [
    # name, explicit, env, expected value, expected source
    ("mixed_precision", None, {}, "no", "default"),
    ("mixed_precision", None, {"ACCELERATE_MIXED_PRECISION": "bf16"}, "bf16", "env ACCELERATE_MIXED_PRECISION"),
    ("mixed_precision", None, {"OVERDRIVE_MIXED_PRECISION": "fp16"}, "fp16", "env OVERDRIVE_MIXED_PRECISION"),
    ("mixed_precision", None, {"OVERDRIVE_MIXED_PRECISION": "fp16", "ACCELERATE_MIXED_PRECISION": "bf16"}, "fp16",
     "env OVERDRIVE_MIXED_PRECISION"),
    ("mixed_precision", "no", {"OVERDRIVE_MIXED_PRECISION": "fp16", "ACCELERATE_MIXED_PRECISION": "bf16"}, "no",
     "argument"),
    ("mixed_precision", "bf16", {}, "bf16", "argument"),
    ("mixed_precision", None, {"ACCELERATE_MIXED_PRECISION": "BF16"}, "bf16", "env ACCELERATE_MIXED_PRECISION"),
    ("mixed_precision", None, {"ACCELERATE_MIXED_PRECISION": ""}, "no", "default"),
    ("cpu", None, {}, False, "default"),
    ("cpu", None, {"ACCELERATE_USE_CPU": "true"}, True, "env ACCELERATE_USE_CPU"),
    ("cpu", None, {"OVERDRIVE_USE_CPU": "0", "ACCELERATE_USE_CPU": "1"}, False, "env OVERDRIVE_USE_CPU"),
    ("cpu", True, {"OVERDRIVE_USE_CPU": "0"}, True, "argument"),
    ("gradient_accumulation_steps", None, {}, 1, "default"),
    ("gradient_accumulation_steps", None, {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, 4,
     "env ACCELERATE_GRADIENT_ACCUMULATION_STEPS"),
    ("gradient_accumulation_steps", 2, {"OVERDRIVE_GRADIENT_ACCUMULATION_STEPS": "8"}, 2, "argument"),
    ("debug", None, {"ACCELERATE_DEBUG_MODE": "yes"}, True, "env ACCELERATE_DEBUG_MODE"),
    ("dynamo_backend", None, {}, "no", "default"),
]


@pytest.mark.parametrize(("name", "explicit", "env", "value", "source"), CASES)
def test_precedence_table(name: str, explicit: object, env: dict[str, str], value: object, source: str) -> None:
    assert resolve(name, explicit, env) == (value, source)


@pytest.mark.parametrize(
    ("name", "env", "needle"),
    [
        ("mixed_precision", {"ACCELERATE_MIXED_PRECISION": "fp17"}, "fp17"),
        ("cpu", {"OVERDRIVE_USE_CPU": "maybe"}, "maybe"),
        ("gradient_accumulation_steps", {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "0"}, "ACCELERATE_GRADIENT"),
        ("gradient_accumulation_steps", {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "-1"}, "-1"),
    ],
)
def test_bad_env_values_name_the_variable(name: str, env: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        resolve(name, None, env)


def test_explicit_value_is_checked_too() -> None:
    with pytest.raises(ValueError, match="'fp17'.*argument.*'no', 'fp16', 'bf16'"):
        resolve("mixed_precision", "fp17", {})


def test_every_setting_has_an_overdrive_and_accelerate_name() -> None:
    for setting in SETTINGS.values():
        assert setting.env[0].startswith("OVERDRIVE_"), setting.name
        assert any(v.startswith("ACCELERATE_") for v in setting.env), setting.name
        assert setting.help


@pytest.mark.parametrize(("text", "value"), [("1", True), ("TRUE", True), ("on", True), ("0", False), ("no", False)])
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value
