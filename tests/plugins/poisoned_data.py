"""`data.name: poisoned_linear`: the tutorial's points on y = theta * x + b, with NaN targets at chosen samples.

`data.kwargs.poison: [i, ...]` lists training-sample indices whose target is NaN: an update whose
global batch holds one gets a NaN loss and NaN gradients (on whichever rank the sample lands), which
is how bad data reaches a real training. Which updates that is follows from the global-batch sampler
(`template.data.GlobalBatchSampler`), so it is the same on any number of processes and across resumes.
"""

from __future__ import annotations

from torch.utils.data import Dataset, TensorDataset

from template.data import DATASETS, synthetic_linear


@DATASETS.register("poisoned_linear")
def poisoned_linear(seed: int, poison: list[int] | tuple[int, ...] = (), **kwargs: float) -> tuple[Dataset, Dataset]:
    train, eval_set = synthetic_linear(seed, **kwargs)  # type: ignore[arg-type]
    x, y = train.tensors
    y = y.clone()
    y[list(poison)] = float("nan")
    return TensorDataset(x, y), eval_set
