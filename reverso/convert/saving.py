"""Saving and loading converted models: one safetensors file, weights plus a JSON recipe.

The recipe (:class:`~reverso.convert.recipe.Recipe`) says how to rebuild the network: the source
model, named in a registry (a timm name, a torchvision builder, a reverso reference model, or a
``"package.module:function"`` factory of a package the caller trusts), and each conversion with
its options. Nothing is unpickled: safetensors holds raw tensors and the recipe is JSON.

:func:`load` treats every file as written by a stranger (see docs/loading.md):

1. the recipe is checked against its schema (types, ranges, known names; unknown keys refused)
   and a SHA-256 of the weights and the recipe against the one stored (a file changed after
   saving is refused; the checksum is no signature: someone who rewrites a file can recompute it);
2. the network is built without weights (:func:`~reverso.frontend.meta.weightless`), calling only
   registry builders and trusted factories, with arguments that cannot load, read or download;
3. every parameter and buffer is compared, by name, shape and dtype, with the file's tensors;
4. only then is the network given the file's tensors.

Its memory is therefore a small multiple of the file's tensors, whatever the recipe says.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from reverso.convert.builders import build
from reverso.convert.recipe import FORMAT, Recipe, recipe_of
from reverso.errors import FileFormatError, OptionError
from reverso.frontend.provenance import SourceModel, source_of, torchvision_source
from reverso.frontend.sources import Source, check_trust
from reverso.ir.edit import model_dtype
from reverso.nn.njet import NJetConv2d
from reverso.options import MAX_SIGMA, check_size

#: fixed buffers (non-persistent: not in the file) a loaded network may hold beyond its tensors
FIXED_BUFFER_ALLOWANCE = 64 << 20
#: the tensors the weightless build of any file's recipe may make, beyond 16 per file tensor
BUILD_BUDGET = 4096
#: the most tensors a file may hold
MAX_TENSORS = 100_000


def save(
    model: nn.Module,
    path: str | Path,
    *,
    source: str | dict | None = None,
    source_kwargs: dict | None = None,
    input_size=None,
) -> Path:
    """Write ``model``'s weights and the recipe that rebuilds it to ``path`` (safetensors).

    ``model`` is a network a reverso conversion returned, or a plain model (saved as it is).
    ``source`` names where the original model came from when reverso cannot tell (your own
    model class): ``"package.module:function"``, called with ``source_kwargs`` (JSON scalars).
    The file is written whole or not at all (a temporary file renamed into place); an existing
    file's permissions are kept.
    """
    from safetensors.torch import save_file

    recipe = recipe_of(model) or Recipe("none", source=source_of(model))
    if source is not None:
        recipe = recipe.with_source(_named_source(source, source_kwargs))
    if input_size is not None:
        recipe = recipe.replace(input_size=check_size(input_size))
    if recipe.first.source is None:
        original = SourceModel.original(model)
        found = torchvision_source(original)
        if found is None:
            raise OptionError(
                f"reverso cannot tell how to rebuild the original {original.short_name} "
                f"({original.class_name}): pass source='package.module:function' (and "
                "source_kwargs=) naming the factory that builds it, or mark the model with "
                "reverso.remember_source before converting"
            )
        recipe = recipe.with_source(found)
    text = recipe.file_json(str(model_dtype(model)).removeprefix("torch."))
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "recipe": text, "sha256": _checksum(tensors, text)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _named_source(source, kwargs) -> Source:
    data = source if isinstance(source, dict) else {"factory": source, "kwargs": kwargs or {}}
    return Source.from_json(data, "source", OptionError)


def load(
    path: str | Path, *, trust: Iterable[str] = (), device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the module saved at ``path`` and load its weights.

    timm models, torchvision's classification builders and reverso's reference models are built
    by name. A file whose model comes from your own factory needs its package in ``trust``
    (``trust=["mypkg"]``): reverso then imports that exact module and calls that one function.
    Nothing else is ever called, read, written or downloaded (see docs/loading.md).
    """
    from safetensors import safe_open

    trust = check_trust(trust)
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"no file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if len(f.keys()) > MAX_TENSORS:
                raise FileFormatError(f"{path} holds more than {MAX_TENSORS} tensors; refused")
            # copies in torch's own (aligned) memory: kernels on unaligned data round differently
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118
    except FileFormatError:
        raise
    except Exception as err:
        raise FileFormatError(
            f"{path} is not a readable safetensors file ({err}); was it written by reverso.save?"
        ) from err
    if metadata.get("format") != FORMAT or "recipe" not in metadata:
        raise FileFormatError(f"{path} is a safetensors file but not one written by reverso.save")
    if metadata.get("sha256") != _checksum(tensors, metadata["recipe"]):
        raise FileFormatError(
            f"{path} was changed after it was saved: the SHA-256 of its weights and recipe does "
            "not match the one stored with them"
        )
    recipe, dtype = Recipe.from_text(metadata["recipe"], f"the recipe in {path}")
    budget = BUILD_BUDGET + 16 * len(tensors)  # a genuine file's build makes about 3 per tensor
    where, sizes = f"the recipe in {path}", []
    model = build(recipe, trust, where, meta=True, budget=budget, sizes=sizes)
    if dtype != "float32":  # the builders make float32 networks
        model.to(dtype=getattr(torch, dtype))
    file_bytes = _check_tensors(model, tensors, path)
    try:
        model = _materialise(model, tensors)
    except _NeedsRealBuild as err:  # a layer whose fixed buffers only its constructor makes
        if max(sizes) > max(FIXED_BUFFER_ALLOWANCE, 4 * file_bytes):
            raise FileFormatError(
                f"{path}: {err} holds fixed buffers reverso recomputes only by building the "
                f"networks of the recipe for real, and they take {max(sizes)} bytes for "
                f"{file_bytes} bytes of weights in the file; refused"
            ) from None
        model = build(recipe, trust, where)
        if dtype != "float32":
            model.to(dtype=getattr(torch, dtype))
        model.load_state_dict(tensors, strict=True)
    _check_scales(model, path)
    return model.to(device)


def _check_scales(model: nn.Module, path: Path) -> None:
    """The learned scales of N-Jet convs size their kernels: a file's may not ask for kernels
    larger than a scale of :data:`~reverso.options.MAX_SIGMA` gives."""
    for name, module in model.named_modules():
        if isinstance(module, NJetConv2d):
            sigma = float(module.sigma.detach().max())
            if math.isfinite(sigma) and sigma > MAX_SIGMA:  # NaN and inf keep the grid
                raise FileFormatError(
                    f"{path} holds an N-Jet conv ({name}) of scale {sigma:g}; reverso loads "
                    f"scales up to {MAX_SIGMA:g} (the kernel grows with the scale)"
                )


def _check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> int:
    """Every tensor the recipe's network holds, by name, shape and dtype, is the file's; its fixed
    buffers (not in the file) stay within :data:`FIXED_BUFFER_ALLOWANCE` or the file's size. The
    file's tensor bytes."""
    state = model.state_dict()
    removed = getattr(model, "removed_modules", ())  # dead branches older files still hold
    for name in [k for k in tensors if k not in state and _in_modules(k, removed)]:
        del tensors[name]
    for name in list(state) + [k for k in tensors if k not in state]:
        want, have = state.get(name), tensors.get(name)
        if want is None or have is None:
            where = "the file holds" if want is None else "the file lacks"
            raise FileFormatError(
                f"the weights in {path} do not fit the network its recipe builds: {where} "
                f"{name!r}. The source model's code may have changed since the file was saved"
            )
        if tuple(want.shape) != tuple(have.shape) or want.dtype != have.dtype:
            raise FileFormatError(
                f"the weights in {path} do not fit the network its recipe builds: {name!r} is "
                f"{tuple(have.shape)} {have.dtype} in the file, {tuple(want.shape)} {want.dtype} "
                "in the network"
            )
    stored = {id(t) for t in state.values()}
    fixed = sum(b.numel() * b.element_size() for b in model.buffers() if id(b) not in stored)
    file_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    if fixed > max(FIXED_BUFFER_ALLOWANCE, file_bytes):
        raise FileFormatError(
            f"the network the recipe in {path} builds holds {fixed} bytes of fixed buffers, more "
            f"than its {file_bytes} bytes of weights; refused"
        )
    return file_bytes


def _in_modules(name: str, removed) -> bool:
    """Whether the tensor ``name`` is, or belongs to, one of the ``removed`` modules and tensors
    (paths from the rewritten graph's root, which a network's ``features`` may prefix)."""
    return any(f".{path}." in f".{name}." for path in removed)


class _NeedsRealBuild(Exception):
    """A module holds fixed buffers it cannot recompute after a weightless build."""


def _materialise(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The weightless ``model`` holding the file's tensors: its fixed buffers are computed first
    (as after ``to_empty()``), then the file's tensors become its parameters and buffers (the
    layers' load hooks see them, as with ``load_state_dict``)."""
    shared = _shared_parameters(model)
    for module in model.modules():
        fixed = [
            n for n in module._non_persistent_buffers_set if module._buffers.get(n) is not None
        ]
        if not fixed:
            continue
        if not hasattr(module, "init_non_persistent_buffers"):
            raise _NeedsRealBuild(f"{type(module).__name__} ({type(module).__module__})")
        for name in fixed:
            module._buffers[name] = torch.empty_like(module._buffers[name], device="cpu")
        module.init_non_persistent_buffers()
    model.load_state_dict(tensors, strict=True, assign=True)
    for first, others in shared:  # weights tied in the model stay tied
        for owner, name in others:
            setattr(owner, name, getattr(*first))
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise _NeedsRealBuild("a tensor outside the state")
    return model


def _shared_parameters(model: nn.Module) -> list:
    """Groups of (module, name) holding one parameter object (tied weights): the first, then the
    others."""
    seen: dict[int, list] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                seen.setdefault(id(p), []).append((module, name))
    return [(places[0], places[1:]) for places in seen.values() if len(places) > 1]


def _checksum(tensors: dict[str, torch.Tensor], recipe: str) -> str:
    digest = hashlib.sha256(recipe.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
