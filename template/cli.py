"""Command-line plumbing shared by the scripts: argument parsing and the `error: ...` exit-2 contract."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from template.config import Config, ConfigError, load_config
from template.distributed import LaunchError, LRSyncError
from template.nonfinite import NonFiniteError
from template.trainer import DriftError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2, like every other bad input
        fail(f"arguments: {message}")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parser(description: str, many_configs: bool = False) -> argparse.ArgumentParser:
    p = _Parser(description=description)
    if many_configs:
        p.add_argument("--config", action="append", help="YAML config; repeat to overlay several")
    else:
        p.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.max_steps=50")
    return p


def run(main: Callable[[Config, argparse.Namespace], object], description: str,
        argv: Sequence[str] | None = None, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Parse, load the config, call `main`; config and launch errors become one `error:` line, exit 2."""
    p = parser(description)
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        main(cfg, args)
    except (ConfigError, LaunchError) as exc:
        fail(str(exc))
    except (NonFiniteError, DriftError, LRSyncError) as exc:  # training went wrong: say so in one line, status 1
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
