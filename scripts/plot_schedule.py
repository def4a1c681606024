#!/usr/bin/env python
"""Draw the lr curve that one or several configs would produce, without training.

    python scripts/plot_schedule.py --config configs/seed_builtin.yaml [--config B.yaml ...] \\
        [key=value ...] --out lr.png

Overrides apply to every config. Each config's param groups are drawn as separate curves, overlaid in
one PNG with a legend; the schedule is simulated through the same interface the trainer drives. What the
trainer would warn about (a schedule ending before train.max_steps, an lr of 0 on update 1) is printed
as `warning:` lines on stderr, and what it would refuse is refused here too.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from template.cli import fail, parser
from template.config import load_config
from template.errors import ConfigError


def main(argv: list[str] | None = None) -> None:
    p = parser("Plot the lr schedule of one or several configs without training.", many_configs=True)
    p.add_argument("--out", required=True, help="PNG file to write")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        fail(f"--out: expected a .png file, got '{out}'")
    if not out.parent.is_dir():
        fail(f"--out: directory {out.parent} does not exist")

    from template.reporting.plotting import plot_lr_curves
    from template.schedules import check_schedule
    from template.schedules.preview import preview_lr_curves

    curves = {}
    try:
        for path in args.config or [None]:
            cfg = load_config(path, args.overrides)
            label = Path(path).stem if path else "default"
            previewed = preview_lr_curves(cfg)
            first_lrs = {group: lrs[0] for group, (_, lrs) in previewed.items() if lrs}
            # updates per epoch is not known here: an epoch-interval schedule's horizon goes unchecked
            for line in check_schedule(cfg.scheduler, cfg.train.max_steps, first_lrs, updates_per_epoch=None):
                print(f"warning: {label}: {line}", file=sys.stderr)
            for group, curve in previewed.items():
                curves[label if group in ("default", "0") else f"{label} lr/{group}"] = curve
    except ConfigError as exc:
        fail(str(exc))
    plot_lr_curves(curves, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
