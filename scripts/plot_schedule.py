#!/usr/bin/env python
"""Draw the lr curve that one or several configs would produce, without training.

    python scripts/plot_schedule.py --config configs/seed_builtin.yaml [--config B.yaml ...] \\
        [key=value ...] --out lr.png

Overrides apply to every config. Each config's param groups are drawn as separate curves, overlaid in
one PNG with a legend; the schedule is simulated through the same interface the trainer drives.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from template.cli import fail, parser
from template.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> None:
    p = parser("Plot the lr schedule of one or several configs without training.", many_configs=True)
    p.add_argument("--out", required=True, help="PNG file to write")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        fail(f"--out: expected a .png file, got '{out}'")
    if not out.parent.is_dir():
        fail(f"--out: directory {out.parent} does not exist")

    from template.plotting import plot_lr_curves
    from template.preview import preview_lr_curves

    curves = {}
    try:
        for path in args.config or [None]:
            cfg = load_config(path, args.overrides)
            label = Path(path).stem if path else "default"
            for group, curve in preview_lr_curves(cfg).items():
                curves[label if group in ("default", "0") else f"{label} lr/{group}"] = curve
    except ConfigError as exc:
        fail(str(exc))
    plot_lr_curves(curves, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
