"""Command-line plumbing shared by the scripts: argument parsing and the `error: ...` exit-2 contract."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from template.config import Config, load_config
from template.errors import RUN_ERRORS, USER_ERRORS
from template.runtime.compile import compile_failure
from template.runtime.distributed import collective_timeout, lost_peer


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2, like every other bad input
        fail(f"arguments: {message}")


def reports_errors() -> bool:
    """Whether this process prints config errors: under a launcher every rank finds the same error, so
    rank 0 says it, plus the first rank of every other machine (whose files may differ from rank 0's)."""
    return os.environ.get("RANK", "0") == "0" or os.environ.get("LOCAL_RANK", "0") == "0"


def tell_launcher(line: str) -> None:
    """Put our one line into torch elastic's error file (torchrun and accelerate launch set
    TORCHELASTIC_ERROR_FILE per rank), so the launcher's failure summary shows it as the root cause instead
    of a pointer to its docs. The file's format is what `torch.distributed.elastic...errors.record` writes."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or Path(path).exists():
        return
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps({"message": {"message": line, "extraInfo": {
            "py_callstack": line, "timestamp": str(int(time.time()))}}}))


def fail(message: str, status: int = 2) -> NoReturn:
    """One `error:` line (once per job under a launcher, see `reports_errors`), then exit `status`."""
    tell_launcher(f"error: {message}")
    if reports_errors():
        print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def config_sections() -> str:
    """The config's sections and top-level keys, for --help: what can be set, and where the schema says more."""
    lines = ["config sections (each key settable as section.key=value):"]
    for f in dataclasses.fields(Config):
        kind = f.default_factory if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(kind):
            keys = ", ".join(g.name for g in dataclasses.fields(kind))
            lines.append(f"  {f.name}: {keys}")
        else:
            lines.append(f"  {f.name}")
    lines.append(f"schema, defaults and comments: {Path(__file__).with_name('config.py')}; a config's full form: "
                 "the config.yaml written into output_dir")
    return "\n".join(lines)


def parser(description: str, many_configs: bool = False) -> argparse.ArgumentParser:
    p = _Parser(description=description, epilog=config_sections(), formatter_class=argparse.RawDescriptionHelpFormatter)
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
    except USER_ERRORS as exc:
        fail(str(exc))
    except RUN_ERRORS as exc:  # went wrong: status 1; every rank raised the same error
        fail(str(exc), status=1)
    except Exception as exc:
        failure = compile_failure(exc)  # inductor compiles at the first forward: the platform cannot
        if failure is not None:
            fail(str(failure))
        lost = collective_timeout(exc) or lost_peer(exc)  # this rank's own view: every rank that sees it says so
        if lost is None:
            raise
        rank = os.environ.get("RANK")
        line = f"error: {'rank ' + rank + ': ' if rank else ''}{lost}"
        tell_launcher(line)
        print(line, file=sys.stderr, flush=True)
        raise SystemExit(1) from None
