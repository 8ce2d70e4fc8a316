"""Every option has one source, its record in reverso.options: the functions' keyword defaults,
the passes' options and the command line's flags all agree with it."""

import dataclasses
import inspect

import pytest
from reverso.passes import BUILTIN as BUILTIN_PASSES

import reverso
from reverso.cli.parser import _parser
from reverso.options import TRANSFORM_OPTIONS

FUNCTIONS = [name for name, record in TRANSFORM_OPTIONS.items() if record is not None]


def defaults(record) -> dict:
    return {f.name: f.default for f in dataclasses.fields(record)}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_defaults_to_its_record(name):
    record = TRANSFORM_OPTIONS[name]
    params = inspect.signature(getattr(reverso, name)).parameters
    shared = [p for p in params if p in defaults(record)]
    assert shared, f"reverso.{name} takes none of {record.__name__}'s fields"
    for p in shared:
        assert params[p].default == defaults(record)[p], f"reverso.{name}({p}=...)"


def test_topdown_takes_every_layout_field():
    params = inspect.signature(reverso.topdown).parameters
    layout = set(defaults(TRANSFORM_OPTIONS["topdown"])) - {"width"}  # width: an int arrangement
    assert layout <= set(params)


@pytest.mark.parametrize("name", sorted(BUILTIN_PASSES))
def test_each_pass_reports_its_records_fields(name):
    cls = BUILTIN_PASSES[name]
    if cls.Options is None:
        assert cls().options() == {}
        return
    assert cls().options() == cls.Options().to_json()


#: the command line's flags of each record (the others are the Python API's only)
FLAGS = {
    "topdown": ("merge", "upsample", "pyramid", "merge_width", "memory", "arrangement"),
    "antialias": ("filter_size", "variant"),
    "frames": ("frame",),
    "steerable": ("unit",),
}


def test_the_command_lines_flags_default_to_the_records():
    args = _parser().parse_args(["convert", "resnet18", "-o", "x.safetensors"])
    for name, fields in FLAGS.items():
        for field in fields:
            assert getattr(args, field) == defaults(TRANSFORM_OPTIONS[name])[field], (name, field)


def test_a_flag_takes_only_the_records_choices():
    parser = _parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", "resnet18", "-o", "x.safetensors", "--merge", "sum"])
    args = parser.parse_args(["convert", "m", "-o", "x.safetensors", "--merge-width", "inner"])
    assert args.merge_width == "inner"
