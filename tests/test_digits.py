"""The real-data example: scikit-learn's digits, `configs/digits.yaml`, and its held-out accuracy."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from template.config import load_config
from template.data import DATASETS
from template.errors import ConfigError
from template.models import MLP

from conftest import ROOT, read_metrics, read_summary, run_here

CONFIG = ROOT / "configs" / "digits.yaml"
MIN_ACCURACY = 0.95  # stated in configs/digits.yaml; seeds 0-9 reach 0.967-0.983 (seed 0: 0.975)


@pytest.fixture(scope="module", autouse=True)
def digits():
    """The dataset function, imported when these tests run rather than when pytest collects every file
    (scikit-learn takes ~3 s to import, in each worker)."""
    pytest.importorskip("sklearn")
    from template.data.sklearn_digits import digits
    from template.metrics import load_shipped

    load_shipped()  # configs/digits.yaml's metrics registered before the runs

    return digits


def accuracy(model: torch.nn.Module, dataset) -> float:
    x, y = dataset.tensors
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).double().mean().item()


def test_digits_is_registered_and_returns_float32_features_and_int64_labels(digits):
    assert DATASETS.get("digits") is digits
    train, held_out = digits(seed=0)
    assert len(train) + len(held_out) == 1797 and len(held_out) == 360
    for dataset in (train, held_out):
        x, y = dataset.tensors
        assert x.dtype == torch.float32 and x.shape[1] == 64
        assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))


def test_digits_split_is_stratified_seeded_and_scaled_on_the_train_part(digits):
    train, held_out = digits(seed=0)
    train_counts = torch.bincount(train.tensors[1], minlength=10).double()
    held_counts = torch.bincount(held_out.tensors[1], minlength=10).double()
    quarter = torch.full((10,), 0.25, dtype=torch.float64)
    assert torch.allclose(held_counts / train_counts, quarter, atol=0.02)  # 20/80 in every class
    again = digits(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(held_out.tensors, again[1].tensors, strict=True))
    other = digits(seed=1)[1].tensors[0]
    assert not torch.equal(held_out.tensors[0], other)
    assert torch.equal(digits(seed=1, split_seed=0)[1].tensors[0], held_out.tensors[0])
    x = train.tensors[0]
    varying = x.std(dim=0) > 0
    assert torch.allclose(x.mean(dim=0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(x.std(dim=0, unbiased=False)[varying], torch.ones(int(varying.sum())), atol=1e-4)


def test_bad_eval_fraction_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.kwargs"):
        DATASETS.build("digits", 0, eval_fraction=1.5)


def test_digits_config_loads_and_names_the_plugin():
    cfg = load_config(CONFIG)
    assert cfg.imports == ["template.data.sklearn_digits"]
    assert (cfg.data.name, cfg.loss.name, cfg.model.name) == ("digits", "cross_entropy", "mlp")
    assert cfg.model.kwargs["in_features"] == 64 and cfg.model.kwargs["out_features"] == 10


@pytest.mark.e2e
def test_digits_config_trains_to_the_stated_held_out_accuracy(tmp_path):
    out = tmp_path / "digits"
    run_here("--config", str(CONFIG), f"output_dir={out}", "tracking.wandb=false", "train.progress=false")
    cfg = load_config(out / "config.yaml")  # the resolved config the run saved
    assert read_summary(out)["step"] == cfg.train.max_steps

    model = MLP(**cfg.model.kwargs)
    model.load_state_dict(load_file(out / "model.safetensors"))
    _, held_out = DATASETS.get("digits")(cfg.seed, **cfg.data.kwargs)  # the split the run held out
    acc = accuracy(model, held_out)
    print(f"digits held-out accuracy: {acc:.4f} on {len(held_out)} images")
    assert acc >= MIN_ACCURACY
    summary = read_summary(out)
    assert summary["eval/accuracy"] == pytest.approx(acc, abs=1e-6)  # eval.metrics: the same number, logged
    assert sum(map(sum, summary["confusion_matrix"])) == len(held_out)

    rows = read_metrics(out)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] / 10
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert len(evals) == 3 and evals[-1] < 0.3
    assert json.loads((out / "summary.json").read_text())["world_size"] == 1
