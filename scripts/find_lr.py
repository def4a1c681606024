#!/usr/bin/env python
"""lr range test: `python scripts/find_lr.py [--config PATH] [--min-lr 1e-6 --max-lr 1 --num-steps 100
--beta 0.98 --diverge 4] [key=value ...]`, also under accelerate launch / torchrun.

Prints `suggested lr: <value>` (steepest descent of the smoothed loss) and the minimum / 10, and writes
lr_find.png and lr_find.json into output_dir. See template/tools/lr_find.py.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from accelerate import PartialState

from template.cli import run
from template.config import Config
from template.errors import NonFiniteError
from template.tools.lr_find import COMPLETED, LRFindSettings, find_lr


def flags(p: argparse.ArgumentParser) -> None:
    d = LRFindSettings()
    p.add_argument("--min-lr", type=float, default=d.min_lr, help=f"lr of the first update (default {d.min_lr})")
    p.add_argument("--max-lr", type=float, default=d.max_lr, help=f"lr of the last update (default {d.max_lr})")
    p.add_argument("--num-steps", type=int, default=d.num_steps, help=f"updates at most (default {d.num_steps})")
    p.add_argument("--beta", type=float, default=d.beta, help=f"loss smoothing, EMA weight (default {d.beta})")
    p.add_argument("--diverge", type=float, default=d.diverge,
                   help=f"stop when the smoothed loss exceeds this x its best (default {d.diverge})")


def main(cfg: Config, args: argparse.Namespace) -> None:
    settings = LRFindSettings(args.min_lr, args.max_lr, args.num_steps, args.beta, args.diverge)
    result = find_lr(cfg, settings)
    if not result.losses:  # every rank alike: the losses are the same everywhere
        raise NonFiniteError(f"the loss was not finite at the first update (lr {settings.min_lr:g}): the lr range "
                             "test has nothing to read; check the model and data, or lower --min-lr")
    if not PartialState().is_main_process:
        return
    print(f"lr range test: {result.stop_step} updates from {settings.min_lr:g} to {settings.max_lr:g} on "
          f"{result.world_size} process(es), {result.stopped_reason} (at lr {result.lrs[-1]:.3g})")
    if result.suggestion_steepest is not None:
        print(f"suggested lr: {result.suggestion_steepest:.3g}")
    else:  # a curve too short for a slope still has a minimum: a number on the line scripts parse
        print(f"suggested lr: {result.suggestion_min_over_10:.3g} (minimum / 10: too few updates before the "
              "loss diverged for a steepest slope; lower --max-lr or raise --num-steps)")
    print(f"minimum / 10: {result.suggestion_min_over_10:.3g}")
    if result.stopped_reason == COMPLETED and min(result.smoothed) == result.smoothed[-1]:  # min / 10 = max / 10
        print(f"note: the loss was still falling at the last lr ({result.lrs[-1]:.3g}); a larger --max-lr "
              "shows where it turns up")
    out = Path(cfg.output_dir)
    print(f"wrote {out / 'lr_find.json'} and {out / 'lr_find.png'}")


if __name__ == "__main__":
    run(main, "lr range test: find a learning rate for a config, on 1 or N processes.", extra=flags)
