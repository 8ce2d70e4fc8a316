"""Training with the paper's protocol: schedule, splits, repeats, resumable checkpoints, AMP."""

import pytest
import torch
from torch import nn

import reverso
import reverso.settings
from reverso.errors import ReversoError
from reverso.study.data import Data, TensorImages
from reverso.study.train import evaluate, train


def tiny_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def test_learning_rate_divided_by_ten_at_half_and_four_fifths(small):
    torch.manual_seed(0)
    result = train(tiny_cnn(), small, epochs=10, progress=False)
    lrs = [round(h["lr"], 6) for h in result.runs[0].history]
    assert lrs == [0.1] * 5 + [0.01] * 3 + [0.001] * 2
    # 90/10 split of the 600 training digits
    assert [h["epoch"] for h in result.runs[0].history] == list(range(1, 11))


def test_learning_rate_drops_at_the_ceiling_of_half_and_four_fifths():
    from reverso.study.recipes import lr_drop_epochs

    assert lr_drop_epochs(10, (0.5, 0.8)) == [5, 8]
    assert lr_drop_epochs(5, (0.5, 0.8)) == [3, 4]  # round(2.5) would drop after epoch 2
    assert lr_drop_epochs(3, (0.5, 0.8)) == [2, 3]
    assert lr_drop_epochs(30, (0.5, 0.8)) == [15, 24]


def test_lenet_learns_real_digits(mnist, golden):
    torch.manual_seed(0)
    model = golden.LeNetFC()
    before = evaluate(model, mnist)
    result = train(model, mnist, epochs=3, progress=False)
    assert before < 0.3 and result.runs[0].test_accuracy > 0.8
    assert result.model is model  # run 0 trains the model passed in
    assert evaluate(model, mnist) == pytest.approx(result.runs[0].test_accuracy)


def test_repeats_reshuffle_the_split_and_reinitialise(small):
    torch.manual_seed(0)
    model = tiny_cnn()
    result = train(model, small, epochs=2, repeats=3, seed=5, progress=False)
    assert [r.seed for r in result.runs] == [5, 6, 7]
    a, b = result.models[1], result.models[2]
    assert not torch.equal(a[0].weight, b[0].weight)
    accs = result.accuracies
    mean = sum(accs) / 3
    std = (sum((x - mean) ** 2 for x in accs) / 2) ** 0.5
    assert result.mean == pytest.approx(mean) and result.std == pytest.approx(std)
    assert "over 3 runs" in str(result)


def test_factory_builds_each_run_from_a_seed(small):
    r1 = train(tiny_cnn, small, epochs=1, repeats=2, seed=3, progress=False)
    r2 = train(tiny_cnn, small, epochs=1, repeats=2, seed=3, progress=False)
    assert r1.accuracies == r2.accuracies  # the same seeds give the same runs
    for a, b in zip(r1.models, r2.models, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_interrupted_training_resumes_to_the_same_weights(small, tmp_path):
    settings = {"epochs": 4, "progress": False, "seed": 1}
    torch.manual_seed(0)
    straight = tiny_cnn()
    uninterrupted = train(straight, small, **settings)

    def stop_after_two(run, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    first = tiny_cnn()
    with pytest.raises(KeyboardInterrupt):
        train(first, small, checkpoint=tmp_path, callback=stop_after_two, **settings)
    torch.manual_seed(123)  # the resumed run must not depend on the fresh weights or RNG
    resumed_model = tiny_cnn()
    resumed = train(resumed_model, small, checkpoint=tmp_path, **settings)
    assert [h["epoch"] for h in resumed.runs[0].history] == [1, 2, 3, 4]
    for p, q in zip(straight.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert resumed.runs[0].test_accuracy == uninterrupted.runs[0].test_accuracy


def test_checkpoint_from_other_settings_or_corrupt_is_refused(small, tmp_path):
    train(tiny_cnn(), small, epochs=1, checkpoint=tmp_path, progress=False)
    with pytest.raises(ReversoError, match="other settings"):
        train(tiny_cnn(), small, epochs=1, lr=0.05, checkpoint=tmp_path, progress=False)
    (tmp_path / "run0.pt").write_bytes(b"garbage")
    with pytest.raises(ReversoError, match="cannot be read"):
        train(tiny_cnn(), small, epochs=1, checkpoint=tmp_path, progress=False)


def test_mixed_precision_runs_and_learns(small):
    # on the CPU, amp=True autocasts to bfloat16 (on CUDA it is the default)
    torch.manual_seed(0)
    result = train(tiny_cnn(), small, epochs=3, amp=True, progress=False)
    assert result.runs[0].history[-1]["loss"] < result.runs[0].history[0]["loss"]


def test_per_pixel_mean_is_subtracted():
    images = torch.rand(40, 3, 8, 8)
    data = Data(
        "toy",
        TensorImages(images, torch.zeros(40, dtype=torch.long)),
        TensorImages(images[:8], torch.zeros(8, dtype=torch.long)),
        (3, 8, 8),
        ["a", "b"],
        mean=torch.full((3, 8, 8), 0.5),
    )
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 64, 2)

        def forward(self, x):
            seen.append(x.detach())
            return self.fc(x.flatten(1))

    train(Spy(), data, epochs=1, batch_size=64, val_fraction=0.0, progress=False)
    # one shuffled batch of all 40 training images, each minus the mean
    got = torch.sort(seen[0].flatten(1).sum(1)).values
    want = torch.sort((images - 0.5).flatten(1).sum(1)).values
    assert len(seen[0]) == 40 and torch.allclose(got, want, atol=1e-4)


class NoReset(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.scale


def test_bad_arguments(small):
    with pytest.raises(reverso.OptionError, match="epochs"):
        train(tiny_cnn(), small, epochs=0)
    with pytest.raises(reverso.OptionError, match="val_fraction"):
        train(tiny_cnn(), small, val_fraction=1.5)
    with pytest.raises(reverso.OptionError, match=r"nn\.Module"):
        train(42, small)
    with pytest.raises(ReversoError, match="reset_parameters"):
        train(NoReset(), small, epochs=1, repeats=2, progress=False)


def test_reverso_smoke_runs_the_protocol_in_tiny_settings(small, monkeypatch):
    monkeypatch.setenv("REVERSO_SMOKE", "1")
    with pytest.warns(
        UserWarning, match="REVERSO_SMOKE is set: train runs with epochs=1, repeats=1"
    ):
        result = train(tiny_cnn, small, epochs=30, repeats=4, progress=False)
    assert len(result.runs) == 1 and [h["epoch"] for h in result.runs[0].history] == [1]
    monkeypatch.setenv("REVERSO_SMOKE", "0")
    assert reverso.settings.smoke() is False
