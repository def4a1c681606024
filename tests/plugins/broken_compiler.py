"""Inductor fails at the first forward, as on a platform whose compiler toolchain is broken in a way the
preflight check cannot see (a compiler that is found but cannot build). Import it under `imports:`."""

from __future__ import annotations

import torch._inductor.compile_fx as compile_fx


def _broken(*args: object, **kwargs: object) -> None:
    raise RuntimeError("simulated: the C++ compiler crashed building the kernel")


compile_fx.compile_fx = _broken  # type: ignore[assignment]
