"""The data section: samples/s of each data source through the trainer's loader code.

    python scripts/benchmark.py --sections data      (or on its own: python -m bench.sections.data [--quick])

The same rows (the default config's synthetic regression: 8 inputs, 1 target, float32) are read as
- tensor     the in-memory TensorDataset the default config trains on,
- hf         `data.name: hf` over those rows in 8 Parquet files, one column per feature (an Arrow table,
             `columns_to_tensors`),
- hf_stream  `data.name: hf_stream` over the same files (a stream, never indexed),
each through `template.data.TrainData` (what the trainer iterates: the global batch sampler and
`make_loader`, or the stream's own batches), with `data.num_workers` 0 and 2. Every row is the best of a
few timed passes over a fixed number of batches after a warm-up batch. Beside it, the small MLP's own rate
(forward, backward, clip, step on one fixed batch, no data): a source is not what limits training while
its samples/s is well above the model's (with workers, the batches are made in parallel with the update).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.sections import Context
from template.data import TrainData, synthetic_regression

SEED = 0


def _write_parquet(x: torch.Tensor, y: torch.Tensor, path: Path, shards: int) -> list[str]:
    import datasets

    # one column per feature, as tabular data (a CSV, a Parquet table) has them
    table = datasets.Dataset.from_dict({**{f"x{i}": x[:, i].numpy() for i in range(x.shape[1])}, "y": y[:, 0].numpy()})
    files = []
    for k in range(shards):
        name = path / f"rows-{k:03d}.parquet"
        table.shard(shards, k, contiguous=True).to_parquet(str(name))
        files.append(str(name))
    return files


def _rate(make: Any, batch: int, batches: int, repeats: int) -> float:
    """Samples/s of `batches` batches from a fresh iterator per repeat (best repeat), after one warm-up batch."""
    best = 0.0
    for _ in range(repeats):
        it = make()
        next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        best = max(best, batches * batch / (time.perf_counter() - start))
        del it
    return best


def _model_rate(batch: int, x: torch.Tensor, y: torch.Tensor, updates: int, repeats: int) -> float:
    """Samples/s of the default config's MLP updating on one fixed batch: the model's side, no data."""
    from template.losses import SimpleMSELoss
    from template.models import MODELS

    model = MODELS.build("mlp", in_features=8, hidden=64, depth=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = SimpleMSELoss()
    xb, yb = x[:batch], y[:batch]

    def updates_iter() -> Any:
        while True:
            loss_fn(model(xb), yb).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            yield None

    return _rate(updates_iter, batch, updates, repeats)


def data_section(args: argparse.Namespace) -> dict[str, Any]:
    """{"samples_per_s": {source: {workers: rate}}, "model_samples_per_s": rate, "vs_model": ...}."""
    from template.data import hf_dataset, hf_stream

    batch = getattr(args, "batch", 64)
    quick = getattr(args, "quick", False)
    batches, repeats = (200, 1) if quick else (1000, 3)
    size = 16_384 if quick else 65_536
    train, _ = synthetic_regression(SEED, size=size, eval_size=1)
    x, y = train.tensors
    results: dict[str, Any] = {"batch": batch, "rows": size, "batches": batches, "samples_per_s": {}}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        files = _write_parquet(x, y, Path(tmp), shards=8)
        cache = str(Path(tmp) / "cache")
        columns = {"transform": "columns_to_tensors", "cache_dir": cache,
                   "transform_kwargs": {"inputs": [f"x{i}" for i in range(x.shape[1])], "targets": "y"}}
        table, _ = hf_dataset(SEED, data_files=files, **columns)
        stream, _ = hf_stream(SEED, data_files=files, **columns)
        sources = {"tensor": train, "hf": table, "hf_stream": stream}
        for name, data in sources.items():
            results["samples_per_s"][name] = {}
            for workers in (0, 2):
                def make(data: Any = data, workers: int = workers) -> Any:
                    return TrainData(data, batch, 1, 1, 0, SEED, workers, False)

                results["samples_per_s"][name][workers] = _rate(make, batch, batches, repeats)
    model = _model_rate(batch, x, y, batches, repeats)
    results["model_samples_per_s"] = model
    # the share of a no-worker update spent making its batch: data time / (data time + model time)
    results["data_share_no_workers"] = {name: (1 / r[0]) / (1 / r[0] + 1 / model)
                                        for name, r in results["samples_per_s"].items()}
    return results


def run(ctx: Context) -> dict[str, Any]:
    """Needs the data extra (pip install -e ".[data]")."""
    return data_section(ctx.args)


def report(results: dict[str, Any]) -> None:
    if "data" in results:
        print_data_section(results["data"])


def print_data_section(result: dict[str, Any]) -> None:
    print(f"\n-- data: samples/s through template.data.TrainData (batch {result['batch']}, "
          f"{result['rows']} rows of 8 + 1 float32, best of the timed passes)")
    print(f"{'source':12s} {'workers=0':>12s} {'workers=2':>12s} {'share of an update (0 workers)':>32s}")
    for name, rates in result["samples_per_s"].items():
        share = result["data_share_no_workers"][name]
        print(f"{name:12s} {rates[0]:12,.0f} {rates[2]:12,.0f} {share:31.1%}")
    print(f"{'small MLP':12s} {result['model_samples_per_s']:12,.0f}   (forward, backward, clip, step; no data)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rows and batches, one pass")
    p.add_argument("--batch", type=int, default=64, help="samples per batch (default 64: the default config's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    result = data_section(args)
    print_data_section(result)
    return result


if __name__ == "__main__":
    main()
