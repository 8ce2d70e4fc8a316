"""reverso.save / reverso.load: exact round trips, tampered and foreign files refused, no pickle."""

import json
import os
import pickle
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import reverso
from reverso.convert.saving import _checksum
from reverso.errors import FileFormatError


def same_outputs(a, b, x):
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"arrangement": "rev", "merge": "concat", "upsample": "blur"},
        {"arrangement": 12, "njet": {"order": 2}},
    ],
)
def test_top_down_round_trip_is_exact(tmp_path, options):
    td = reverso.topdown(reverso.models.create("lenet_fc"), input_size=(1, 28, 28), **options)
    with torch.no_grad():  # weights that differ from any fresh initialisation
        for p in td.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = reverso.save(td, tmp_path / "td.safetensors")
    loaded = reverso.load(path)
    assert (
        isinstance(loaded, reverso.TopDownNet) and loaded.recipe["options"] == td.recipe["options"]
    )
    for (k, v), (k2, v2) in zip(td.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert same_outputs(td, loaded, torch.rand(3, 1, 28, 28))


def test_timm_sources_and_sibling_transforms(tmp_path):
    model = timm.create_model("test_resnet", num_classes=7, in_chans=1)  # timm's tiny resnet
    x = torch.rand(2, 1, 64, 64)
    for name, converted in (
        ("antialias", reverso.antialias(model, input_size=(1, 64, 64))),
        ("njet", reverso.njet(model)),
        ("frames", reverso.frames(model, frame="alternate")),
        ("steerable", reverso.steerable(model)),
        ("topdown", reverso.topdown(model, input_size=(1, 64, 64))),
    ):
        loaded = reverso.load(reverso.save(converted, tmp_path / f"{name}.safetensors"))
        assert same_outputs(converted, loaded, x), name


def chains(size: tuple) -> dict:
    """Networks converted from a top-down net, by name ("njet of topdown" ...); chains over
    antialias in tests/models."""
    torch.manual_seed(0)
    td = reverso.topdown(timm.create_model("resnet10t", num_classes=5), input_size=size)
    return {
        "njet of topdown": reverso.njet(td, input_size=size),
        "checkpoint of topdown": reverso.checkpoint(td, input_size=size),
    }


def test_chains_of_conversions_round_trip(tmp_path):
    """A conversion of a network reverso made records that network's recipe as its base, so the
    whole chain is rebuilt (the file recorded the last step only, over the original model: the
    weights did not fit, or a checkpointed top-down net came back without its checkpoints)."""
    size = (3, 32, 32)
    x = torch.rand(2, *size)
    for name, chain in chains(size).items():
        loaded = reverso.load(reverso.save(chain, tmp_path / "chain.safetensors"))
        assert type(loaded).__name__ == type(chain).__name__, name  # fx classes are per instance
        assert same_outputs(chain, loaded, x), name
        steps = [step.transform for step in chain.reverso_recipe.steps]
        assert " of ".join(steps) == name, name
        if name.startswith("checkpoint"):  # the checkpoints come back too
            assert any("checkpoint" in type(m).__name__.lower() for m in loaded.modules())


def test_memory_options_round_trip_once(memory_round_trip):
    """memory= is part of the conversion's recipe: loading applies it once (not again on top)."""
    memory_round_trip(reverso.topdown)


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A package of the user's own, ``user_nets``, with a model factory ``lenet``."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "user_nets.py").write_text(
        "from reverso.models import lenet_fc\n\n\n"
        "def lenet(num_classes=10):\n    return lenet_fc(num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    yield "user_nets"
    sys.modules.pop("user_nets", None)


def test_a_users_model_needs_its_factory_and_trust(tmp_path, user_package):
    import user_nets

    td = reverso.topdown(user_nets.lenet(), input_size=(1, 28, 28))
    with pytest.raises(reverso.OptionError, match=r"source='package\.module:function'"):
        reverso.save(td, tmp_path / "td.safetensors")
    path = reverso.save(td, tmp_path / "td.safetensors", source="user_nets:lenet")
    with pytest.raises(reverso.ReversoError, match=r"trust=\['user_nets'\]"):
        reverso.load(path)
    assert same_outputs(td, reverso.load(path, trust=["user_nets"]), torch.rand(2, 1, 28, 28))
    for wrong in (True, "user_nets"):  # a package list, not a flag or one string
        with pytest.raises(reverso.OptionError, match="trust must list package names"):
            reverso.load(path, trust=wrong)


def test_plain_model_with_kwargs(tmp_path, user_package):
    import user_nets

    model = reverso.remember_source(
        user_nets.lenet(num_classes=4), "user_nets:lenet", num_classes=4
    )
    loaded = reverso.load(reverso.save(model, tmp_path / "m.safetensors"), trust=["user_nets"])
    assert type(loaded) is type(model) and same_outputs(model, loaded, torch.rand(2, 1, 28, 28))


def test_dtype_is_kept(tmp_path):
    td = reverso.topdown(reverso.models.create("lenet_fc"), input_size=(1, 28, 28)).to(
        torch.bfloat16
    )
    loaded = reverso.load(reverso.save(td, tmp_path / "bf16.safetensors"))
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert same_outputs(td, loaded, torch.rand(2, 1, 28, 28, dtype=torch.bfloat16))


@pytest.fixture
def saved(tmp_path):
    td = reverso.topdown(reverso.models.create("lenet_fc"), input_size=(1, 28, 28))
    return reverso.save(td, tmp_path / "td.safetensors")


def test_a_flipped_weight_byte_is_refused(saved):
    data = bytearray(saved.read_bytes())
    data[-10] ^= 0x01  # inside the last tensor
    saved.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="changed after it was saved"):
        reverso.load(saved)


def test_an_edited_recipe_is_refused(saved):
    # rewrite the safetensors header (8-byte length, JSON) with another arrangement in the recipe
    data = saved.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    recipe = header["__metadata__"]["recipe"]
    assert '"arrangement": "td"' in recipe
    header["__metadata__"]["recipe"] = recipe.replace('"arrangement": "td"', '"arrangement": "rev"')
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    saved.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + header_len :])
    with pytest.raises(FileFormatError, match="changed after it was saved"):
        reverso.load(saved)


def test_truncated_random_and_foreign_files_are_refused(saved, tmp_path):
    saved.write_bytes(saved.read_bytes()[:200])
    with pytest.raises(FileFormatError, match="not a readable safetensors file"):
        reverso.load(saved)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(FileFormatError, match="not a readable safetensors file"):
        reverso.load(noise)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(FileFormatError, match=r"not one written by reverso\.save"):
        reverso.load(foreign)
    with pytest.raises(FileFormatError, match="no file"):
        reverso.load(tmp_path / "missing.safetensors")


def test_a_recipe_naming_arbitrary_code_is_not_run(tmp_path):
    # a well-formed file (valid checksum) whose recipe asks for os.system: refused before any call
    recipe = json.dumps(
        {
            "format": "reverso",
            "version": 1,
            "transform": "none",
            "input_size": None,
            "kwargs": {},
            "source": {"factory": "os:system", "kwargs": {"command": "true"}},
        }
    )
    tensors = {"w": torch.zeros(2)}
    path = tmp_path / "evil.safetensors"
    save_file(
        tensors,
        str(path),
        metadata={"format": "reverso", "recipe": recipe, "sha256": _checksum(tensors, recipe)},
    )
    with pytest.raises(reverso.ReversoError, match="only calls code from packages you trust"):
        reverso.load(path)


def test_a_file_saved_before_the_pass_split_loads_as_the_same_network(saved, tmp_path):
    # reverso 0.1.0 recorded four passes; downsample_to_upsample then also set strides to 1 and
    # dropped needless projections, which stride_one and drop_projections do now
    with safe_open(str(saved), "pt") as f:
        recipe = json.loads(f.metadata()["recipe"])
    tensors = load_file(str(saved))
    recipe["pipeline"] = [
        c for c in recipe["pipeline"] if c["name"] not in ("stride_one", "drop_projections")
    ]
    text = json.dumps(recipe)
    old = tmp_path / "old.safetensors"
    metadata = {"format": "reverso", "recipe": text, "sha256": _checksum(tensors, text)}
    save_file(tensors, str(old), metadata=metadata)
    new, loaded = reverso.load(saved), reverso.load(old)
    assert [c["name"] for c in loaded.recipe["pipeline"]] == [
        "filter_arrangement",
        "reverse_stages",
        "stride_one",
        "downsample_to_upsample",
        "drop_projections",
        "multiscale_inputs",
    ]
    same_outputs(new, loaded, torch.rand(2, 1, 28, 28))


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert isinstance(reverso.load(saved), reverso.TopDownNet)


def test_custom_passes_cannot_be_saved(tmp_path):
    from reverso.compiler.pipeline import Pass

    pipe = reverso.default_pipeline().append(Pass.from_function(lambda gm, ctx: gm, "mine"))
    td = reverso.topdown(reverso.models.create("lenet_fc"), input_size=(1, 28, 28), passes=pipe)
    with pytest.raises(reverso.OptionError, match="mine: your own"):
        reverso.save(td, tmp_path / "x.safetensors")


@pytest.mark.parametrize(
    ("builder", "kwargs"),
    [
        ("resnet18", {"num_classes": 10}),
        ("mobilenet_v3_small", {}),
        ("squeezenet1_1", {"num_classes": 5}),
    ],
)
def test_a_torchvision_model_round_trips_without_extra_arguments(tmp_path, builder, kwargs):
    model = getattr(torchvision.models, builder)(**kwargs)
    td = reverso.topdown(model, input_size=(3, 64, 64))
    path = reverso.save(td, tmp_path / "td.safetensors")  # no source=
    loaded = reverso.load(path)  # no trust=
    assert loaded.recipe["source"] == {"factory": f"torchvision.models:{builder}", "kwargs": kwargs}
    assert same_outputs(td, loaded, torch.rand(2, 3, 64, 64))
    plain = reverso.load(reverso.save(model, tmp_path / "plain.safetensors"))
    assert type(plain) is type(model) and same_outputs(model, plain, torch.rand(2, 3, 64, 64))


def test_an_unknown_model_is_named_by_its_own_class(tmp_path, converted):
    td = converted("LeNetFC", (1, 28, 28))[1]
    with pytest.raises(reverso.OptionError) as info:
        reverso.save(td, tmp_path / "td.safetensors")
    message = str(info.value)
    assert "the original LeNetFC (conftest:LeNetFC)" in message and "TopDownNet" not in message


def test_a_file_of_the_first_recipe_format_loads_as_it_was_saved(tmp_path):
    """tests/data holds a top-down N-Jet LeNetFC saved by reverso before the recipe had a schema
    (commit c524c7c): the schema reads it, and the network computes what it computed."""
    data = Path(__file__).parents[1] / "data"
    net = reverso.load(data / "lenet_fc_topdown_njet_v1.safetensors").eval()
    expected = load_file(str(data / "lenet_fc_topdown_njet_v1.outputs.safetensors"))
    with torch.no_grad():
        # the same weights; float sums may run in another order (threads), hence a tolerance
        torch.testing.assert_close(net(expected["x"]), expected["y"], rtol=1e-5, atol=1e-6)
    path = reverso.save(net, tmp_path / "again.safetensors")  # written back in today's form
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert same_outputs(net, reverso.load(path), expected["x"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
