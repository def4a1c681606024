"""Command-line plumbing shared by the scripts: argument parsing and the `error: ...` exit-2 contract."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from template.checkpoint import CheckpointWriteError
from template.compile import compile_failure
from template.config import Config, ConfigError, load_config
from template.distributed import LaunchError, LRSyncError, collective_timeout
from template.hooks import HookError
from template.nonfinite import NonFiniteError
from template.trainer import DriftError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2, like every other bad input
        fail(f"arguments: {message}")


def reports_errors() -> bool:
    """Whether this process prints config errors: under a launcher every rank finds the same error, so
    rank 0 says it, plus the first rank of every other machine (whose files may differ from rank 0's)."""
    return os.environ.get("RANK", "0") == "0" or os.environ.get("LOCAL_RANK", "0") == "0"


def fail(message: str, status: int = 2) -> NoReturn:
    if reports_errors():
        print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


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
    args = p.parse_intermixed_args(argv)  # key=value overrides before and after a script's own flags
    try:
        cfg = load_config(args.config, args.overrides)
        main(cfg, args)
    except (ConfigError, LaunchError) as exc:
        fail(str(exc))
    except (NonFiniteError, DriftError, LRSyncError, CheckpointWriteError, HookError) as exc:  # went wrong: status 1
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as exc:
        failure = compile_failure(exc)  # inductor compiles at the first forward: the platform cannot
        if failure is not None:
            fail(str(failure))
        timeout = collective_timeout(exc)
        if timeout is None:
            raise
        rank = os.environ.get("RANK")
        print(f"error: {'rank ' + rank + ': ' if rank else ''}{timeout}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
