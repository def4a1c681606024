"""Real data without a download: scikit-learn's bundled 8x8 handwritten digits as `data.name: digits`.

Not imported by the template itself (scikit-learn is the optional `examples` extra): a config opts in
with `imports: [template.data.sklearn_digits]`, the same way a fork adds its own components.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from template.data import DATASETS

try:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError as exc:  # the trainer reports this as `error: imports.N: cannot import ...`, exit 2
    raise ImportError(f"the digits dataset needs scikit-learn: pip install -e '.[examples]' ({exc})") from None


@DATASETS.register("digits")
def digits(seed: int, eval_fraction: float = 0.2, split_seed: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """1797 8x8 images (64 features), 10 classes; a stratified held-out split, standardized on the train part.

    The split is drawn with `split_seed` (default: the run's seed), so the held-out images are a pure
    function of the config: anyone can rebuild the same split to score a saved model. Features are scaled
    with the training part's mean and std only (nothing about the held-out images leaks into training);
    pixels that are constant in the training part are only centered. x is float32, y int64 class indices,
    as `cross_entropy` expects.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    x, y = load_digits(return_X_y=True)  # ships inside scikit-learn: no network
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=eval_fraction, stratify=y, random_state=seed if split_seed is None else split_seed,
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0

    def tensors(features, labels) -> TensorDataset:
        scaled = torch.as_tensor((features - mean) / std, dtype=torch.float32)
        return TensorDataset(scaled, torch.as_tensor(labels, dtype=torch.int64))

    return tensors(x_train, y_train), tensors(x_eval, y_eval)
