"""`train.compile: true`: torch.compile (inductor) on the prepared model, with plain parameter names.

The model is compiled in place (`nn.Module.compile()`), after Accelerate's DDP wrap, so dynamo sees the
DDP module and splits its graph at the gradient buckets (DDPOptimizer) while `state_dict()` and
`named_parameters()` keep their plain names: a `torch.compile(model)` wrapper would prefix every name with
`_orig_mod.` and make checkpoints, `model.safetensors` and the digests depend on the switch. So a run
resumes with compile on from a checkpoint written with compile off, and the reverse.

Inductor compiles lazily, at the first forward; whether it can is checked before training (a C++
compiler on CPU, Triton on CUDA), so a platform that cannot compile fails with one `error:` line.
"""

from __future__ import annotations

import torch
from torch import nn

from template.errors import ConfigError, describe


def compile_unavailable(device: torch.device) -> str | None:
    """Why inductor cannot compile for `device` here, or None if it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python/platform"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "inductor needs Triton on CUDA (pip install triton)"
    if device.type == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as exc:  # inductor raises its own error types for a missing compiler
            return f"inductor needs a C++ compiler on CPU ({' '.join(str(exc).split())[:200]})"
    return None


def check_compile(device: torch.device) -> None:
    """ConfigError (before training) where inductor cannot compile for `device`."""
    reason = compile_unavailable(device)
    if reason:
        raise ConfigError("train.compile", f"{reason}; set train.compile=false")


def compile_model(model: nn.Module) -> None:
    """Compile `model` (the prepared one, DDP wrapper included) in place: its names stay plain."""
    model.compile()


def compile_failure(exc: BaseException) -> ConfigError | None:
    """A compiler failure (at the first forward, long after preflight), as a one-line config error; None for
    any other error."""
    import torch._dynamo.exc

    if isinstance(exc, torch._dynamo.exc.BackendCompilerFailed):
        inner = getattr(exc, "inner_exception", None)  # what the compiler raised, without dynamo's banner
        first = describe(inner) if inner is not None else next(
            (line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return ConfigError("train.compile", f"torch.compile failed on this platform ({first[:300]}); "
                                            "set train.compile=false")
    return None
