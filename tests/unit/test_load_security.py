"""Files written by an attacker: what a crafted reverso file can make reverso.load call, write,
download or allocate (nothing), and the dataset readers and the command line on hostile input.

Each file is crafted as an attacker would: a valid reverso file whose recipe is edited, with the
checksum recomputed (it has no key)."""

import contextlib
import json
import os
import sys
import textwrap

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

import reverso
from reverso.convert.saving import _checksum
from reverso.errors import DatasetError, FileFormatError, OptionError, ReversoError

# -- watching what a call does -----------------------------------------------------------------

WATCHED = (
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.fork",
    "subprocess.Popen",
    "socket.connect",
    "socket.getaddrinfo",
    "urllib.Request",
    "pickle.find_class",
    "os.remove",
    "os.rename",
    "os.mkdir",
    "shutil.rmtree",
    "import",
)
_events: list | None = None


def _audit(event: str, args) -> None:
    if _events is None:
        return
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        )
        if writing:
            _events.append(("write", str(path)))
    elif event == "import":
        if args[0].split(".")[0] in ("evilpkg",) or "hub" in args[0]:
            _events.append((event, args[0]))
    elif event.startswith(WATCHED):
        _events.append((event, str(args)[:200]))


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one records only inside watched()


@contextlib.contextmanager
def watched():
    """Record every write, process, connection, unpickling and removal while the block runs."""
    global _events
    _events = []
    try:
        yield _events
    finally:
        _events = None


class AllocationGuard(TorchFunctionMode):
    """Fail on any real (non-meta) tensor larger than ``limit`` bytes made while active."""

    def __init__(self, limit: int = 64 << 20):
        super().__init__()
        self.limit = limit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and not out.is_meta:
            size = out.numel() * out.element_size()
            assert size <= self.limit, f"{func} made a {size}-byte tensor"
        return out


def test_the_watcher_sees_writes_processes_and_connections(tmp_path):
    import socket
    import subprocess

    with watched() as events:
        (tmp_path / "f").write_text("x")
        subprocess.run(["true"], check=True)
        with contextlib.suppress(OSError):
            socket.getaddrinfo("localhost", 80)
    kinds = {kind for kind, _ in events}
    assert {"write", "subprocess.Popen", "socket.getaddrinfo"} <= kinds, kinds


# -- crafting files ----------------------------------------------------------------------------


def craft(path, recipe, tensors) -> "os.PathLike":
    """A reverso file holding ``tensors`` and ``recipe`` (a dict or JSON text), checksum fixed."""
    text = recipe if isinstance(recipe, str) else json.dumps(recipe)
    metadata = {"format": "reverso", "recipe": text, "sha256": _checksum(tensors, text)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def recipe_of_file(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["recipe"])


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory):
    """A genuine top-down LeNetFC file: its recipe, tensors and outputs."""
    torch.manual_seed(0)
    td = reverso.topdown(reverso.models.create("lenet_fc"), input_size=(1, 28, 28)).eval()
    path = reverso.save(td, tmp_path_factory.mktemp("genuine") / "td.safetensors")
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        out = td(x)
    return recipe_of_file(path), load_file(str(path)), x, out, reverso.load(path).recipe


def none_recipe(source: dict) -> dict:
    return {
        "format": "reverso",
        "version": 1,
        "dtype": "float32",
        "transform": "none",
        "input_size": None,
        "kwargs": {},
        "source": source,
    }


@pytest.fixture
def evilpkg(tmp_path, monkeypatch):
    """A package a user trusts, which imports os and pathlib the way packages do."""
    package = tmp_path / "pkgs" / "evilpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent("""
        import os
        from os import system
        from pathlib import Path
        from torch import nn

        def make(width=4):
            return nn.Sequential(nn.Conv2d(1, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    yield "evilpkg"
    sys.modules.pop("evilpkg", None)


# -- code execution ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        "torchvision:datasets.utils.os.system",  # an attribute path through a trusted package
        "reverso:settings.os.system",
        "os:system",
        "torchvision.datasets.utils:download_url",
        "torchvision.datasets.utils:extract_archive",
        "reverso.__main__:main",
        "torch.hub:load",
        "builtins:exec",
    ],
)
def test_a_factory_outside_the_registries_is_never_called(tmp_path, factory):
    marker = tmp_path / "ran"
    source = {"factory": factory, "kwargs": {"command": f"touch {marker}"}}
    path = craft(tmp_path / "evil.safetensors", none_recipe(source), {"w": torch.zeros(2)})
    with watched() as events, pytest.raises(ReversoError):
        reverso.load(path)
    assert not marker.exists() and events == [], events


def test_trusting_a_package_grants_its_own_functions_only(tmp_path, evilpkg):
    marker = tmp_path / "ran"
    for factory in (
        "evilpkg:system",
        "evilpkg:os",
        "evilpkg:Path",
        "evilpkg:os.system",
        "evilpkg.os:system",
    ):
        source = {"factory": factory, "kwargs": {"command": f"touch {marker}"}}
        path = craft(tmp_path / "evil.safetensors", none_recipe(source), {"w": torch.zeros(2)})
        with watched() as events, pytest.raises(FileFormatError):
            reverso.load(path, trust=[evilpkg])
        assert not marker.exists() and not [e for e in events if e[0] == "os.system"], factory
    model = reverso.remember_source(__import__(evilpkg).make(4), "evilpkg:make", width=4)
    path = reverso.save(model, tmp_path / "ok.safetensors")
    with pytest.raises(ReversoError, match=r"trust=\['evilpkg'\]"):
        reverso.load(path)
    assert isinstance(reverso.load(path, trust=[evilpkg]), torch.nn.Sequential)


@pytest.mark.parametrize(
    "trust",
    [
        ["torch"],
        ["torchvision"],
        ["timm"],
        ["os"],
        ["subprocess"],
        ["reverso"],
        ["builtins"],
        ["évil"],
        "evilpkg",
    ],
)
def test_libraries_and_the_standard_library_cannot_be_trusted(tmp_path, trust):
    path = craft(tmp_path / "x.safetensors", none_recipe({"factory": "torch.hub:load"}), {})
    with pytest.raises(OptionError, match="trust"):
        reverso.load(path, trust=trust)


def test_look_alike_names_are_refused_without_being_suggested(tmp_path):
    lookalike = "r\u0435verso.models:lenet_fc"  # a Cyrillic e
    path = craft(tmp_path / "x.safetensors", none_recipe({"factory": lookalike}), {})
    with pytest.raises(FileFormatError) as info:
        reverso.load(path)
    assert "\u0435" not in str(info.value) and "trust=" not in str(info.value)
    path = craft(tmp_path / "y.safetensors", none_recipe({"timm": "resn\u0435t18"}), {})
    with pytest.raises(FileFormatError) as info:
        reverso.load(path)
    assert "\u0435" not in str(info.value)


@pytest.mark.parametrize(
    "source",
    [
        {"factory": "torchvision.models:resnet18", "kwargs": {"weights": "DEFAULT"}},
        {
            "factory": "torchvision.models:resnet18",
            "kwargs": {"progress": True, "weights_backbone": "x"},
        },
        {"timm": "resnet18", "kwargs": {"pretrained": True}},
        {"timm": "resnet18", "kwargs": {"checkpoint_path": "/etc/passwd"}},
        {"timm": "resnet18", "kwargs": {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}},
        {"timm": "resnet18", "kwargs": {"act_layer": "../../etc/passwd"}},
        {"factory": "torchvision.models:fasterrcnn_resnet50_fpn", "kwargs": {}},  # not a classifier
        {"timm": "resnet18", "kwargs": {"pruned": True}},  # reads a file of timm's
        # a device or dtype would place the build outside the weightless one
        {"timm": "vit_tiny_patch16_224", "kwargs": {"device": "cpu", "embed_dim": 4096}},
        {"timm": "resnet18", "kwargs": {"dtype": "float64"}},
        {"factory": "torchvision.models:" + "a" * 100_000},  # no edit distance to a long name
    ],
)
def test_sources_never_load_weights_or_read_files(tmp_path, source):
    path = craft(tmp_path / "x.safetensors", none_recipe(source), {"w": torch.zeros(1)})
    with watched() as events, pytest.raises(FileFormatError):
        reverso.load(path)
    assert not [e for e in events if e[0] in ("write", "socket.connect", "socket.getaddrinfo")]


# -- memory --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"source": {"timm": "resnet18", "kwargs": {"num_classes": 1_000_000}}}, "fc.weight"),
        ({"source": {"timm": "resnet18", "kwargs": {"num_classes": 10**9}}}, "num_classes"),
        ({"input_size": [1, 20000, 20000]}, "input_size"),
        ({"transform": "njet", "kwargs": {"sigma": 1e5}}, "sigma"),
        ({"transform": "hierarchical", "kwargs": {"K": 10**7}}, "K"),
    ],
)
def test_memory_is_bounded_by_the_file_not_the_recipe(tmp_path, edit, match):
    recipe = none_recipe({"timm": "resnet18", "kwargs": {"num_classes": 10}}) | {
        "input_size": [3, 32, 32]
    }
    recipe |= edit
    with torch.device("meta"):
        state = timm.create_model("resnet18", num_classes=10).state_dict()
    tensors = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in state.items()}
    path = craft(tmp_path / "x.safetensors", recipe, tensors)
    with AllocationGuard(limit=64 << 20), pytest.raises(FileFormatError, match=match):
        reverso.load(path)


def test_a_fitting_file_with_a_huge_learned_scale_is_refused(tmp_path):
    net = reverso.njet(reverso.models.create("lenet_fc"), input_size=(1, 28, 28))
    with torch.no_grad():
        next(m for m in net.modules() if isinstance(m, reverso.nn.NJetConv2d)).scale.fill_(20.0)
    path = reverso.save(net, tmp_path / "x.safetensors")
    with pytest.raises(FileFormatError, match=r"N-Jet conv .* of scale"):
        reverso.load(path)


# -- the schema ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"input_size": 5}, "input_size"),
        ({"input_size": [1, 28.5, 28]}, "input_size"),
        ({"input_size": [True, 28, 28]}, "input_size"),
        ({"leaf_modules": 5}, "leaf_modules"),
        ({"source": {"factory": 5}}, "source.factory"),
        ({"dtype": "Tensor"}, "dtype"),
        (
            {"version": "1"},
            r"version is '1'; this reverso reads recipes of version 1 \(the integer\)",
        ),
        ({"version": 2}, "newer than this reverso"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"options": {"merge": "sum"}}, "merge='sum' is not supported"),
        ({"options": {"arrangement": "td", "width": 8}}, "width"),
        ({"pipeline": [{"name": "njet", "kwargs": {"ordr": 2}}]}, "did you mean 'order'"),
        ({"pipeline": [{"name": "os.system", "kwargs": {}}]}, "no registered pass"),
        ({"source": {"timm": "resnet18", "kwargs": {"x": [1]}}}, "JSON scalar"),
        ({"base": {"transform": "none"}}, "either a source or a base"),
    ],
)
def test_every_field_is_checked(tmp_path, lenet_file, edit, match):
    recipe, tensors, *_ = lenet_file
    path = craft(tmp_path / "x.safetensors", {**recipe, **edit}, tensors)
    with pytest.raises(FileFormatError, match=match):
        reverso.load(path)


def test_deep_nesting_and_non_json_numbers_are_refused(tmp_path, lenet_file):
    recipe, tensors, *_ = lenet_file
    deep = json.dumps(recipe)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(FileFormatError, match="nested 100001 levels deep"):
        reverso.load(craft(tmp_path / "deep.safetensors", deep, tensors))
    nan = json.dumps({**recipe, "input_size": [1, 28, 28]}).replace("[1, 28, 28]", "[1, NaN, 28]")
    with pytest.raises(FileFormatError, match="NaN is not a JSON number"):
        reverso.load(craft(tmp_path / "nan.safetensors", nan, tensors))


def test_a_tensor_that_does_not_fit_is_named(tmp_path, lenet_file):
    recipe, tensors, *_ = lenet_file
    name = sorted(tensors)[3]
    bad = dict(tensors) | {name: torch.zeros(7)}
    with pytest.raises(FileFormatError, match=f"'{name}' is \\(7,\\) torch.float32 in the file"):
        reverso.load(craft(tmp_path / "x.safetensors", recipe, bad))
    with pytest.raises(FileFormatError, match="the file holds 'extra'"):
        reverso.load(
            craft(tmp_path / "y.safetensors", recipe, dict(tensors) | {"extra": torch.zeros(1)})
        )


@pytest.mark.parametrize(
    "source",
    [
        {"timm": "vit_tiny_patch16_224", "kwargs": {"num_heads": 0}},  # ZeroDivisionError in timm
        {"timm": "vit_tiny_patch16_224", "kwargs": {"embed_dim": -5}},  # RuntimeError
        {"timm": "resnet18", "kwargs": {"features_only": True, "out_indices": 7}},  # IndexError
    ],
)
def test_a_builder_refusing_its_arguments_is_a_file_format_error(tmp_path, source):
    with pytest.raises(FileFormatError, match="cannot be built with"):
        reverso.load(craft(tmp_path / "x.safetensors", none_recipe(source), {}))


def test_valid_looking_options_that_no_conversion_takes_are_refused(tmp_path, lenet_file):
    recipe, tensors, *_ = lenet_file
    lenet = none_recipe({"factory": "reverso.models:lenet_fc"}) | {"input_size": [1, 28, 28]}
    digits = json.dumps(lenet | {"transform": "frames", "kwargs": {"sigma": 7}})
    with pytest.raises(FileFormatError, match=r"kwargs\.sigma must be a positive number"):
        reverso.load(
            craft(tmp_path / "a.safetensors", digits.replace(": 7", ": 7" + "0" * 400), {})
        )
    tiny = lenet | {"transform": "frames", "kwargs": {"sigma": 0.001}}
    with pytest.raises(OptionError, match="too small for a Gaussian frame"):
        reverso.load(craft(tmp_path / "b.safetensors", tiny, {}))
    whole = {**recipe, "pipeline": [{"name": "hierarchical", "kwargs": {}}], "passes": []}
    with pytest.raises(FileFormatError, match="does not run inside a top-down pipeline"):
        reverso.load(craft(tmp_path / "c.safetensors", whole, tensors))


def test_a_recipe_building_far_more_than_its_file_holds_is_stopped_early(tmp_path):
    deep = {
        "transform": "frames",
        "input_size": [3, 224, 224],
        "kwargs": {},
        "base": none_recipe({"timm": "vit_tiny_patch16_224", "kwargs": {"depth": 4096}}),
    }
    for key in ("format", "version", "dtype"):
        deep[key] = deep["base"].pop(key)
    with pytest.raises(FileFormatError, match="more than 4112 tensors"):
        reverso.load(craft(tmp_path / "deep.safetensors", deep, {"w": torch.zeros(1)}))


def test_leaf_classes_of_the_libraries_are_never_imported_by_a_file(tmp_path, lenet_file):
    recipe, tensors, *_ = lenet_file
    module = "torch.ao.quantization.fx._model_report.model_report"  # imports matplotlib
    assert module not in sys.modules
    leaf = {**recipe, "leaf_modules": [f"{module}:ModelReport"]}
    with pytest.raises(FileFormatError, match="not a module the model's libraries have loaded"):
        reverso.load(craft(tmp_path / "x.safetensors", leaf, tensors))
    assert module not in sys.modules


def test_a_file_of_too_many_tensors_is_refused_before_reading_them(tmp_path, monkeypatch):
    from reverso.convert import saving

    monkeypatch.setattr(saving, "MAX_TENSORS", 10)
    tensors = {f"t{i}": torch.zeros(0) for i in range(11)}
    with pytest.raises(FileFormatError, match="holds more than 10 tensors"):
        reverso.load(craft(tmp_path / "x.safetensors", none_recipe({"timm": "resnet18"}), tensors))


def test_a_layer_that_only_its_constructor_fills_loads_by_building_it(tmp_path, evilpkg):
    """A module of the user's with a non-persistent buffer and no init_non_persistent_buffers:
    the network is built for real once the weightless one has matched the file (and is small)."""
    (tmp_path / "pkgs" / evilpkg / "fixed.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        class Fixed(nn.Module):
            def __init__(self):
                super().__init__()
                self.register_buffer("offset", torch.arange(4.0).view(1, 4, 1, 1), persistent=False)

            def forward(self, x):
                return x + self.offset

        def make():
            return nn.Sequential(nn.Conv2d(1, 4, 3), Fixed(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    """)
    )
    module = __import__(f"{evilpkg}.fixed", fromlist=["make"])
    model = reverso.remember_source(module.make(), f"{evilpkg}.fixed:make")
    back = reverso.load(reverso.save(model, tmp_path / "f.safetensors"), trust=[evilpkg])
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(back[1].offset, model[1].offset) and torch.equal(back(x), model(x))


# -- the fuzz: any mutation of a valid recipe loads or is refused -----------------------------------


def _paths(value, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, value
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        yield from _paths(child, (*prefix, key))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
    | st.sampled_from(["td", "uni", "topdown", "njet", "none", "resnet18", "reverso.models:nin"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=8,
)  # fmt: skip


@st.composite
def mutations(draw, recipe):
    recipe = json.loads(json.dumps(recipe))
    paths = [p for p, _ in _paths(recipe) if p]
    path = draw(st.sampled_from(paths))
    parent = recipe
    for key in path[:-1]:
        parent = parent[key]
    kind = draw(st.sampled_from(["replace", "delete", "add", "nest"]))
    if kind == "replace":
        parent[path[-1]] = draw(JSON)
    elif kind == "delete":
        del parent[path[-1]]
    elif kind == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=12))] = draw(JSON)
    else:
        parent[path[-1]] = [parent[path[-1]]] if draw(st.booleans()) else {"x": parent[path[-1]]}
    return recipe


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_mutation_of_a_recipe_loads_or_is_refused(tmp_path, lenet_file, data):
    recipe, tensors, x, out, normalised = lenet_file
    mutated = data.draw(mutations(recipe))
    path = craft(tmp_path / "fuzz.safetensors", json.dumps(mutated, allow_nan=True), tensors)
    before = set(tmp_path.iterdir())
    with watched() as events, AllocationGuard():
        try:
            loaded = reverso.load(path)
        except ReversoError:
            loaded = None
    assert set(tmp_path.iterdir()) == before
    assert events == [], events
    if loaded is None:
        return
    state = loaded.state_dict()
    assert state.keys() == tensors.keys()
    assert all(torch.equal(state[k], tensors[k]) for k in tensors)
    if loaded.recipe == normalised:
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), out)  # the same recipe: the same network


# -- datasets ------------------------------------------------------------------------------------


class _Command:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_cifar_batches_are_read_without_running_their_code(tmp_path):
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "ran"
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": _Command(f"touch {marker}")}))
    with pytest.raises(DatasetError, match=r"asks to call (posix|os)\.system"):
        reverso.data.load("cifar10", root=tmp_path, verify=False)
    with pytest.raises(
        DatasetError, match="not the official CIFAR-10 file"
    ):  # an error, not a warning
        reverso.data.load("cifar10", root=tmp_path)
    assert not marker.exists()
    (folder / "data_batch_3").write_bytes(pickle.dumps(np.array([None, 1], dtype=object)))
    with pytest.raises(DatasetError, match="only numeric arrays"):
        reverso.data.load("cifar10", root=tmp_path, verify=False)
    # numpy.ndarray called by the pickle itself: 100,000 images of uninitialised memory
    bomb = (
        b"\x80\x02}(X\x04\x00\x00\x00datacnumpy\nndarray\nJ\xa0\x86\x01\x00J\x00\x0c\x00\x00"
        b"\x86X\x02\x00\x00\x00u1\x86Ru."
    )
    (folder / "data_batch_3").write_bytes(bomb)
    with pytest.raises(DatasetError, match="larger than the file"):
        reverso.data.load("cifar10", root=tmp_path, verify=False)


def test_mnist_reads_its_idx_files_and_no_pickle_beside_them(tmp_path):
    raw, processed = tmp_path / "MNIST" / "raw", tmp_path / "MNIST" / "processed"
    raw.mkdir(parents=True)
    processed.mkdir()
    for name in reverso.study.local_datasets.MNIST_FILES:
        (raw / name).write_bytes(b"junk")  # torchvision's reader preferred processed/*.pt
    big = torch.zeros(1, dtype=torch.uint8).expand(10**8, 28, 28)  # 10^8 images in 2 kB
    for name in ("training.pt", "test.pt"):
        torch.save((big, torch.zeros(1, dtype=torch.int64).expand(10**8)), processed / name)
    with pytest.raises(DatasetError, match="is not an IDX file"):
        reverso.data.load("mnist", root=tmp_path)


def _image_folder(root):
    from PIL import Image

    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / name / "0.png")


def test_image_folders_skip_fifos_and_end_link_loops(tmp_path):
    _image_folder(tmp_path)
    os.mkfifo(tmp_path / "train" / "a" / "x.png")  # opening it would wait for a writer forever
    (tmp_path / "train" / "a" / "empty.png").symlink_to("/proc/self/status")  # reads as empty
    (tmp_path / "train" / "b" / "loop").symlink_to(tmp_path / "train" / "b")
    (tmp_path / "train" / "b" / "out").symlink_to("/")  # out of the class folder: not followed
    (tmp_path / "train" / "b" / "sub").mkdir()
    (tmp_path / "train" / "b" / "sub" / "inside").symlink_to(tmp_path / "train" / "b" / "sub")
    d = reverso.data.image_folder(tmp_path, size=8)
    assert [p.name for p, _ in d.train.samples] == ["0.png", "0.png"]
    assert d.train.classes == ["a", "b"]


def test_an_image_any_decoder_fails_on_is_a_dataset_error(tmp_path):
    import io

    from PIL import Image

    _image_folder(tmp_path)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"  # PIL hands EPS to gs
    (tmp_path / "val" / "a" / "1.png").write_bytes(eps)
    tiff = io.BytesIO()
    Image.new("RGB", (17, 13)).save(tiff, format="TIFF")
    data = bytearray(tiff.getvalue())
    data[72] = 5  # StripOffsets of type RATIONAL: a TypeError inside PIL
    (tmp_path / "val" / "b" / "1.tif").write_bytes(bytes(data))
    d = reverso.data.image_folder(tmp_path, size=8)
    for i, (path, _) in enumerate(d.test.samples):
        if path.name.startswith("1"):
            with watched() as events, pytest.raises(DatasetError, match="not a readable image"):
                d.test[i]
            assert not [e for e in events if e[0] == "subprocess.Popen"], events


def test_decompression_bombs_and_bad_sizes_are_refused(tmp_path):
    from PIL import Image

    _image_folder(tmp_path)
    with pytest.raises(OptionError, match="size must be a positive integer"):
        reverso.data.image_folder(tmp_path, size=0)
    Image.new("1", (12_000, 16_000)).save(tmp_path / "val" / "a" / "bomb.png")  # 192 Mpixels
    d = reverso.data.image_folder(tmp_path, size=8)
    bomb = next(i for i, (path, _) in enumerate(d.test.samples) if path.name == "bomb.png")
    with pytest.raises(DatasetError, match="decompression bomb"):
        d.test[bomb]


# -- the command line ----------------------------------------------------------------------------


def test_the_command_line_checks_before_it_works(tmp_path, capsys):
    from reverso.cli import main

    out = tmp_path / "td.safetensors"
    out.write_bytes(b"keep me")
    out.chmod(0o640)
    assert main(["convert", "lenet_fc", "-o", str(out)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["convert", "lenet_fc", "-o", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
    assert main(["convert", "lenet_fc", "-o", str(out), "--force"]) == 0
    assert out.stat().st_mode & 0o777 == 0o640 and reverso.load(out)
    for argv, flag in (
        (["summary", "lenet_fc", "--input-size", "1", "100000", "100000"], "--input-size"),
        (["summary", "lenet_fc", "--num-classes", "-3"], "--num-classes"),
        (["gradcam", "lenet_fc", "--count", "0"], "--count"),
        (["demo", "--epochs", "-1"], "--epochs"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "on"),
    [
        ("1", True),
        ("true", True),
        ("on", True),
        ("YES", True),
        ("off", False),
        ("no", False),
        ("none", False),
        ("0", False),
        ("", False),
    ],
)
def test_smoke_mode_turns_on_only_when_asked(monkeypatch, value, on):
    from reverso import settings

    monkeypatch.setenv("REVERSO_SMOKE", value)
    assert settings.smoke() is on
