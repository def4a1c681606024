"""A PyTorch distributed training template: Accelerate trainer, custom loss/optimizer/lr strategies, W&B."""

__version__ = "0.1.0"
