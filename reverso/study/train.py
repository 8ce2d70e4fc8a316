"""Training with the top-down paper's protocol (docs/methods/evaluation.md, section 2).

SGD with momentum 0.9 (Nesterov, as the reference code), batch 128, learning rate 0.1 divided by
10 at 50% and 80% of the epochs, a 90/10 train/validation split of the training set, and several
runs with reshuffled splits whose test accuracies are reported as mean and std.

Run 0 trains the model you pass (in place, from its current weights); runs 1, 2, ... train copies
re-initialised with ``seed + run``. Pass a factory (``lambda: reverso.topdown(...)``) instead of a
model to build every run from scratch. With ``checkpoint=<folder>`` every epoch is saved
(``run<k>.pt``, plain tensors and numbers, read back with ``weights_only=True``) and an interrupted
call resumes where it stopped, giving the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from reverso.errors import OptionError, ReversoError
from reverso.ir.modes import evaluating
from reverso.settings import smoke_cap
from reverso.study import distributed, recipes
from reverso.study.images import Data, TensorImages, check_data, for_model


@dataclass
class Run:
    """One training run: its seed, per-epoch history and final test accuracy."""

    seed: int
    history: list[dict] = field(default_factory=list)
    test_accuracy: float = math.nan
    seconds: float = 0.0


@dataclass
class TrainResult:
    runs: list[Run]
    models: list[nn.Module]

    @property
    def accuracies(self) -> list[float]:
        return [r.test_accuracy for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.runs) > 1 else 0.0

    @property
    def model(self) -> nn.Module:
        """The model of run 0 (the one passed in)."""
        return self.models[0]

    def __str__(self) -> str:
        runs = ", ".join(f"{a:.2%}" for a in self.accuracies)
        return (
            f"test accuracy {self.mean:.2%} +- {self.std:.2%} over {len(self.runs)} runs ({runs})"
        )


def train(
    model: nn.Module | Callable[[], nn.Module],
    data: Data,
    *,
    recipe: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float | None = None,
    milestones: tuple[float, ...] = (0.5, 0.8),
    val_fraction: float = 0.1,
    repeats: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    workers: int = 0,
    callback: Callable[[int, dict], None] | None = None,
    name: str | None = None,
    keras_init: bool = False,
) -> TrainResult:
    """Train ``model`` on ``data`` ``repeats`` times with the paper's protocol.

    ``recipe`` (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar10_aug"``; see
    :mod:`reverso.study.recipes`) sets epochs, batch size, learning rate, weight decay (Keras L2:
    PyTorch's is twice the Keras value) and the training augmentation of the reference code;
    arguments given explicitly win. Without a recipe: 30 epochs, batch 128, lr 0.1, and
    ``weight_decay`` the dataset's (0 for MNIST-type sets, 5e-4 for CIFAR-10).
    ``keras_init=True`` re-initialises every run as Keras would (:func:`recipes.keras_init`).
    ``device`` defaults to CUDA when available. ``amp`` (default: on with CUDA) runs forward passes
    in bfloat16 autocast (float16 with a gradient scaler on GPUs without bfloat16).
    ``callback(run, record)`` is called after every epoch with that epoch's record; ``name``
    labels the progress bar.
    """
    chosen = recipes.get(recipe) if recipe is not None else None
    epochs, batch_size, lr, weight_decay = recipes.settings(
        chosen, model, data, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay
    )
    recipes.check_settings(epochs, batch_size, lr, val_fraction, repeats, milestones)
    distributed.init_from_environment()
    capped = smoke_cap("train", epochs=(epochs, 1), repeats=(repeats, 1))
    epochs, repeats = capped["epochs"], capped["repeats"]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = device.type == "cuda" if amp is None else amp
    folder = Path(checkpoint) if checkpoint is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    cfg = {  # the protocol; a checkpoint must have been written with the same
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "nesterov": nesterov,
        "weight_decay": weight_decay,
        "milestones": list(milestones),
        "val_fraction": val_fraction,
    }
    if chosen is not None and chosen.augment is not None:
        cfg["augment"] = chosen.augment
    if keras_init:
        cfg["keras_init"] = True
    runs, models = [], []
    for r in range(repeats):
        net = _model_for_run(model, r, seed + r)
        if keras_init:
            torch.manual_seed(seed + r)
            recipes.keras_init(net)
        run = Run(seed + r)
        trainer = _Trainer(net, data, r, run, device, amp, cfg, workers)
        trainer.label = f"{name or type(net).__name__} run {r + 1}/{repeats}"
        trainer.fit(folder / f"run{r}.pt" if folder is not None else None, progress, callback)
        runs.append(run)
        models.append(net)
    return TrainResult(runs, models)


def _model_for_run(model, run: int, seed: int) -> nn.Module:
    if isinstance(model, nn.Module):
        if run == 0:
            return model
        copy_ = copy.deepcopy(model)
        reinitialize(copy_, seed)
        return copy_
    if callable(model):
        torch.manual_seed(seed)
        built = model()
        if not isinstance(built, nn.Module):
            raise OptionError(
                f"the model factory returned {type(built).__name__}, not an nn.Module"
            )
        return built
    raise OptionError(
        f"model must be an nn.Module or a factory returning one, got {type(model).__name__}"
    )


def reinitialize(model: nn.Module, seed: int) -> None:
    """Fresh weights: ``reset_parameters()`` of every module that has one, seeded."""
    torch.manual_seed(seed)
    orphans = []
    for name, m in model.named_modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        elif any(True for _ in m.parameters(recurse=False)):
            orphans.append(name or type(model).__name__)
    if orphans:
        raise ReversoError(
            f"cannot re-initialise {', '.join(orphans)}: they own parameters but have no "
            "reset_parameters(); pass a factory (e.g. lambda: build_model()) to train() instead"
        )


class _Trainer:
    def __init__(self, net, data: Data, run_index: int, run: Run, device, amp: bool, cfg, workers):
        self.net, self.data, self.run, self.device, self.cfg = net, data, run, device, cfg
        self.workers = workers
        self.run_index = run_index
        self.net.to(device)
        self.model = distributed.wrap(net, device)  # DDP when torchrun started several ranks
        self.train_set, self.val_set = _split(data.train, cfg["val_fraction"], run.seed)
        decay, no_decay = _decay_groups(net)
        self.optimizer = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": cfg["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg["lr"],
            momentum=cfg["momentum"],
            nesterov=cfg["nesterov"] and cfg["momentum"] > 0,
        )
        steps = recipes.lr_drop_epochs(cfg["epochs"], cfg["milestones"])
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, steps, gamma=0.1)
        self.amp_dtype = None
        if amp:
            cuda = device.type == "cuda"
            bf16 = not cuda or torch.cuda.is_bf16_supported()
            self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.amp_dtype is torch.float16 and device.type == "cuda"
        )

    def fit(self, path: Path | None, progress: bool, callback) -> None:
        start_epoch = self._resume(path) if path is not None and path.exists() else 0
        epochs = self.cfg["epochs"]
        from tqdm.auto import tqdm

        bar = tqdm(
            range(start_epoch, epochs),
            desc=self.label,
            initial=start_epoch,
            total=epochs,
            disable=not progress or distributed.rank_and_world()[0] != 0,
            unit="epoch",
            leave=False,
        )
        began = time.perf_counter() - self.run.seconds
        for epoch in bar:
            record = self._epoch(epoch)
            self.run.history.append(record)
            self.run.seconds = time.perf_counter() - began
            bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{record['val_accuracy']:.3f}")
            if path is not None and distributed.rank_and_world()[0] == 0:
                self._save(path, epoch + 1)  # rank 0 writes, every rank resumes from it
            distributed.barrier()
            if callback is not None:
                callback(self.run_index, record)
        bar.close()
        self.run.test_accuracy = evaluate(
            self.net, self.data, self.data.test, self.device, self.cfg["batch_size"]
        )

    def _epoch(self, epoch: int) -> dict:
        self.net.train()
        lr = self.optimizer.param_groups[0]["lr"]
        total, correct, loss_sum = 0, 0, 0.0
        order = torch.Generator().manual_seed(self.run.seed * 100_003 + epoch)
        augment = recipes.AUGMENTATIONS.get(self.cfg.get("augment"))
        draws = torch.Generator().manual_seed(self.run.seed * 100_003 + epoch + 7)
        for x, y in batches(self.train_set, self.cfg["batch_size"], order, self.workers):
            x = for_model(x, self.net, non_blocking=True)
            if augment is not None:
                x = augment(x, draws)
            x = self.data.normalize(x)
            y = y.to(self.device, non_blocking=True)
            with torch.autocast(
                self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                logits = self.model(x)
                loss = F.cross_entropy(logits.float(), y)
            value = loss.item()  # the step's one GPU -> CPU sync
            if not math.isfinite(value):
                raise ReversoError(
                    f"the loss became {value} in epoch {epoch + 1}; lower lr (now {lr}) "
                    "or check the inputs"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += len(y)
            correct += (logits.argmax(1) == y).sum()  # stays on the device until the epoch ends
            loss_sum += value * len(y)
        total, correct, loss_sum = distributed.summed(
            total, int(correct), loss_sum, device=self.device
        )
        self.scheduler.step()
        val = (
            evaluate(self.net, self.data, self.val_set, self.device, self.cfg["batch_size"])
            if len(self.val_set)
            else math.nan
        )
        return {
            "epoch": epoch + 1,
            "lr": lr,
            "loss": loss_sum / max(total, 1),
            "train_accuracy": correct / max(total, 1),
            "val_accuracy": val,
        }

    def _save(self, path: Path, epochs_done: int) -> None:
        state = {
            "epochs_done": epochs_done,
            "settings": self.cfg,
            "seed": self.run.seed,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.run.history,
            "seconds": self.run.seconds,
            "rng": torch.get_rng_state(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # a crash mid-save never leaves a half-written checkpoint

    def _resume(self, path: Path) -> int:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:
            raise ReversoError(
                f"checkpoint {path} cannot be read ({err}); delete it to start this run afresh"
            ) from err
        if state.get("settings") != self.cfg or state.get("seed") != self.run.seed:
            raise ReversoError(
                f"checkpoint {path} was written with other settings ({state.get('settings')}, "
                f"seed {state.get('seed')}); use another checkpoint folder or the same settings"
            )
        try:
            self.net.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ReversoError(f"checkpoint {path} does not fit this model: {err}") from err
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.run.history = list(state["history"])
        self.run.seconds = float(state["seconds"])
        torch.set_rng_state(state["rng"].cpu())
        return int(state["epochs_done"])


def _decay_groups(net: nn.Module) -> tuple[list, list]:
    """Weight decay on weights; none on biases, norm parameters and N-Jet scales (1-D)."""
    decay, no_decay = [], []
    for p in net.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    return decay, no_decay


def _split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A reshuffled train/validation split (``seed`` picks the shuffle)."""
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    if n - n_val < 1:
        raise OptionError(
            f"the training set has {n} samples: too few to split off {val_fraction:.0%}"
        )
    return _subset(dataset, order[n_val:]), _subset(dataset, order[:n_val])


def _subset(dataset: Dataset, index: torch.Tensor) -> Dataset:
    if isinstance(dataset, TensorImages):
        return TensorImages(dataset.images[index], dataset.labels[index])
    return Subset(dataset, index.tolist())


def batches(
    dataset: Dataset, batch_size: int, shuffle: torch.Generator | None = None, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches; in-memory sets are sliced directly, others use a DataLoader."""
    n = len(dataset)
    order = torch.randperm(n, generator=shuffle) if shuffle is not None else torch.arange(n)
    index = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if shuffle is not None:  # training: this rank's shard of every global batch
        index = [distributed.shard(b) for b in index]
    if isinstance(dataset, TensorImages):
        yield from (dataset.batch(b) for b in index if len(b))
        return
    loader = DataLoader(
        dataset,
        batch_sampler=[b.tolist() for b in index if len(b)],
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )
    yield from loader


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Data, dataset: Dataset | None = None, device=None, batch_size: int = 256
) -> float:
    """Accuracy of ``model`` on ``dataset`` (default: the test set), in eval mode."""
    check_data(data)
    dataset = data.test if dataset is None else dataset
    device = device or next(model.parameters()).device
    correct = 0
    with evaluating(model):
        for x, y in batches(dataset, batch_size):
            x = data.normalize(for_model(x, model).to(device))
            correct += (model(x).argmax(1) == y.to(device)).sum()  # on the device: no sync
    return int(correct) / max(len(dataset), 1)
