"""Process-group setup and the cross-rank checks that make "same training on 1 or N processes" true."""

from __future__ import annotations

import atexit
import hashlib
import os
import time
import traceback
import warnings
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, gather_object
from torch import nn

from template.errors import LaunchError, LRSyncError
from template.runtime.sharding import is_dtensor

if TYPE_CHECKING:
    from template.schedules.base import LRSchedule

# Where launchers put the world size: torchrun / accelerate launch, then the MPI flavours Accelerate reads.
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank: one max all-reduce, so all ranks decide alike."""
    if accelerator.num_processes == 1:
        return flag
    reduced = accelerator.reduce(torch.tensor([int(flag)], device=accelerator.device), "max")
    return bool(reduced.item())


def launcher_world_size(env: Mapping[str, str] | None = None) -> int:
    """The number of processes the launcher says it started (1 when nothing says otherwise)."""
    env = os.environ if env is None else env
    for key in WORLD_SIZE_VARS:
        value = env.get(key, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise LaunchError(f"{key}={value!r} in the environment is not an integer") from None
    return 1


def check_launch_env(env: Mapping[str, str] | None = None) -> None:
    """Refuse, before any rendezvous, an environment that claims N processes but cannot form a group.

    A stray `WORLD_SIZE=2` (exported by an earlier job, or a plain `python train.py` inside a launcher's
    shell) without the `RANK` and `MASTER_ADDR` that every launcher sets would otherwise end in a
    traceback from deep inside Accelerate or torch.distributed.
    """
    env = os.environ if env is None else env
    world = launcher_world_size(env)
    if world > 1 and env.get("WORLD_SIZE", "").strip():
        missing = [k for k in ("RANK", "MASTER_ADDR") if not env.get(k, "").strip()]
        if missing:
            raise LaunchError(
                f"WORLD_SIZE={world} is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
                "start the script with `accelerate launch` or `torchrun` (which set all of them), "
                "or unset WORLD_SIZE for a single process"
            )


def make_accelerator(mixed_precision: str | None = None, log_with: str | None = None,
                     project_dir: str | None = None, timeout_s: float | None = None) -> Accelerator:
    """An Accelerator on CUDA when there is one, else on CPU with a real gloo process group.

    On a machine without CUDA, a plain `Accelerator()` under `accelerate launch --multi_gpu` or torchrun
    gives every process world size 1: N independent trainings writing the same output_dir, silently.
    `cpu=True` makes it a real multi-CPU run; and whatever happens, a world size that disagrees with
    the launcher's WORLD_SIZE stops the run (LaunchError: one `error:` line, exit 2) before any work.

    `timeout_s` bounds every collective: a rank that stops answering makes the others fail after that long
    (see `CollectiveTimeout`) instead of gloo's and NCCL's default 30 minutes.
    """
    env = dict(os.environ)  # the launcher's view, before Accelerate rewrites WORLD_SIZE & co. on CPU
    check_launch_env(env)
    launched = launcher_world_size(env)
    try:
        handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))] if timeout_s else []
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision, log_with=log_with,
            project_dir=project_dir, kwargs_handlers=handlers,
        )
    except ValueError as exc:  # Accelerate's and torch.distributed's own launch-environment checks
        raise LaunchError(f"cannot set up the processes: {' '.join(str(exc).split())}") from None
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo":
        _drain_gloo_at_exit()
    if launched != accelerator.num_processes:
        raise LaunchError(
            f"the launcher started {launched} processes but Accelerate sees {accelerator.num_processes} "
            f"({accelerator.distributed_type}); refusing to run independent copies of the training"
        )
    if (accelerator.num_processes == 1 and env.get("MASTER_ADDR") and "ACCELERATE_USE_CPU" in env
            and not any(env.get(k) for k in WORLD_SIZE_VARS)):
        # accelerate's simple launcher sets MASTER_ADDR only when asked for >1 process or machine, yet
        # starts one process per machine: without GPUs it needs --multi_gpu to spawn workers.
        warnings.warn(
            "accelerate launch was asked for several processes or machines but started this process alone "
            "(world size 1). On a machine without GPUs pass --multi_gpu (gloo on CPU) or "
            "--config_file accelerate_config.yaml; with several machines each one now trains on its own.",
            RuntimeWarning, stacklevel=2,
        )
    return accelerator


TIMEOUT_WORDS = ("timed out", "timeout")
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # this package's directory, whatever a fork renamed it to


def in_package(filename: str) -> bool:
    """Whether a code object's file lies in this package (its directory, not its name: a renamed fork too)."""
    try:
        return Path(filename).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def collective_timeout(exc: BaseException) -> str | None:
    """If `exc` is a collective that timed out (a peer rank stuck: SIGSTOP, a deadlock, a hung file system),
    one line naming the collective and the template code that ran it; else None.

    gloo raises a RuntimeError ("Timed out waiting Nms for recv operation") in the waiting rank, from
    the collective itself or, for DDP's gradient all-reduce, from `backward()`. NCCL's watchdog aborts the
    process instead, with its own message naming the operation.
    """
    text = " ".join(str(exc).split())
    if not isinstance(exc, RuntimeError) or not any(word in text.lower() for word in TIMEOUT_WORDS):
        return None
    frames = list(traceback.walk_tb(exc.__traceback__))
    ours = [f for f, _ in frames if in_package(f.f_code.co_filename) and not f.f_code.co_filename.endswith("cli.py")]
    collective = next((f.f_code.co_name for f, _ in reversed(frames)
                       if "torch/distributed" in f.f_code.co_filename.replace("\\", "/")
                       and not f.f_code.co_name.startswith("_") and f.f_code.co_name != "wrapper"), None)
    where = ours[-1] if ours else None
    if collective is None and any(f.f_code.co_name == "backward" for f, _ in frames):
        collective = "the gradient all-reduce (DDP, in backward)"
    what = collective or "a collective"
    place = f" in {where.f_code.co_name} ({Path(where.f_code.co_filename).name}:{where.f_lineno})" if where else ""
    return (f"{what}{place} timed out ({text[:160]}): another rank stopped answering (hung, stopped or "
            "overloaded) for longer than distributed.timeout_s; the job can be resumed: rerun the same "
            "command to continue from the newest checkpoint")


PEER_LOST_WORDS = ("connection closed by peer", "connection reset by peer", "broken pipe", "socket closed")


def lost_peer(exc: BaseException) -> str | None:
    """If `exc` is gloo's error for a peer process that died mid-collective (killed, out of memory, crashed),
    one line saying so; else None. gloo raises it in every surviving rank, from the collective or from DDP's
    gradient all-reduce in `backward()`, with a long C++ trace; NCCL's watchdog aborts the process instead."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, RuntimeError) or not any(word in text.lower() for word in PEER_LOST_WORDS):
        return None
    return (f"lost a peer process: another rank of this job died during a collective ({text[-100:]}); its own "
            "output says why (killed, out of memory, an error); rerun the same command to resume from the newest "
            "checkpoint")


_exit_hook_registered = False
EXIT_DRAIN_S = 0.05


def _drain_gloo_at_exit() -> None:
    """Let gloo's worker threads finish with Python-owned tensors before the interpreter tears down.

    A gloo collective's work object holds the (Python-created) tensors it was given and is destroyed
    on gloo's own worker thread, which must take the GIL to drop them. If that happens after the main
    thread has begun interpreter finalization, the worker is force-exited inside a noexcept destructor:
    `terminate called without an active exception`, SIGABRT, exit -6, after a run that otherwise
    succeeded (measured here: about 1 run in 8 on a loaded 2-core machine; an upstream PyTorch race,
    see pytorch/pytorch#190489). At exit, while the interpreter is still whole, the main thread sleeps
    briefly, releasing the GIL so such a worker can finish, then destroys the group. Both are local
    operations (no collective), so this is safe on every way out, error paths included. NCCL groups
    are not touched: their teardown can block on peers that are gone.
    """
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    _exit_hook_registered = True

    def drain_and_destroy() -> None:
        if torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo":
            time.sleep(EXIT_DRAIN_S)
            torch.distributed.destroy_process_group()

    atexit.register(drain_and_destroy)


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    if is_dtensor(tensor):  # an FSDP2 shard: digest the full parameter (a collective, every rank calls it)
        tensor = tensor.full_tensor().clone()  # clone: a plain tensor, not the async collective's wrapper
    # reshape(-1): a 0-dim parameter (the tutorial's scalar theta) cannot be viewed as bytes directly.
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters by sorted name. Buffers are left out on purpose: DDP broadcasts them from rank 0
    before each forward, and the forward itself (BatchNorm running stats) then updates them from the
    rank's own batch, so after the last update they legitimately differ between replicas."""
    return sorted(model.named_parameters(), key=lambda item: item[0])


def param_digest(model: nn.Module) -> str:
    """sha256 over the parameters' raw bytes, names sorted: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in _parameters(model):
        digest.update(name.encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def plain_model(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    """The user's module: DDP/FSDP wrappers and a `torch.compile` wrapper (Accelerate's `dynamo_backend`,
    whose names carry `_orig_mod.`) removed, so saved and digested names never depend on either."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def replica_digests(accelerator: Accelerator, model: nn.Module) -> list[str]:
    """Every rank's digest, gathered to all ranks (a collective: all ranks must call it)."""
    return list(gather_object([param_digest(plain_model(accelerator, model))]))


def first_drift(accelerator: Accelerator, model: nn.Module) -> str | None:
    """Name of the first parameter (sorted) whose bytes differ between ranks, or None.

    One all-gather of every rank's per-parameter digests (a collective: all ranks must call it, and
    all get the same answer). Meant for after `replica_digests` disagreed, to name the culprit.
    """
    params = _parameters(plain_model(accelerator, model))
    local = [(name, hashlib.sha256(_tensor_bytes(tensor)).hexdigest()) for name, tensor in params]
    tables = gather_object([local])  # one list of (name, digest) per rank, in rank order
    for i, (name, _) in enumerate(tables[0]):
        if any(table[i] != tables[0][i] for table in tables[1:]):
            return name
    return None


_resync_reported = False


def check_lr_sync(accelerator: Accelerator, schedule: LRSchedule, resync: bool) -> None:
    """Compare every rank's lrs with rank 0's; resync from rank 0 or raise LRSyncError.

    By construction all ranks compute the same lr; this catches what construction cannot (a forker's
    strategy reading a rank-local value). The common case costs one small all-reduce (MAX over
    [lrs, -lrs]: equal everywhere iff max == min) and one host sync; only on a mismatch is the full
    table gathered, to name the group, the rank and both values. Every rank sees the same reduced
    values and the same table, so all ranks take the same decision and none is left waiting in a
    collective.

    `resync` makes rank 0 the truth: its lr strategy state (and with it every group's lr) is broadcast
    and loaded on all ranks, so the strategies also agree from here on. It cannot undo updates already
    made with different lrs: those show up as drifted replicas at the end (DriftError), so use it with
    `sync_check_every: 1` if a strategy is known to be rank-dependent.
    """
    if accelerator.num_processes == 1:
        return
    lrs = schedule.lrs()
    local = torch.tensor(list(lrs.values()), dtype=torch.float64, device=accelerator.device)
    extremes = torch.cat([local, -local])
    torch.distributed.all_reduce(extremes, op=torch.distributed.ReduceOp.MAX)
    if torch.equal(extremes[: len(lrs)], -extremes[len(lrs):]):
        return
    table = accelerator.gather(local[None]).cpu()  # (world, groups), the same on every rank
    bits = table.view(torch.int64)
    mismatched = (bits != bits[0]).any(dim=1).nonzero().flatten().tolist()
    if not mismatched:  # equal bits after all (e.g. NaN everywhere, which max/min cannot tell)
        return
    rank = mismatched[0]
    group = next(i for i in range(table.shape[1]) if bits[rank, i] != bits[0, i])
    name, theirs, mine = list(lrs)[group], table[0, group].item(), table[rank, group].item()
    message = f"group '{name}' is {mine!r} on rank {rank} but {theirs!r} on rank 0"
    if not resync:
        raise LRSyncError(f"lr out of sync: {message} (distributed.sync_check_action=error)")
    state = broadcast_object_list([schedule.state_dict() if accelerator.is_main_process else None])[0]
    schedule.load_state_dict(state)
    global _resync_reported
    if accelerator.is_main_process and not _resync_reported:
        _resync_reported = True
        warnings.warn(f"lr out of sync: {message}; resynced every rank from rank 0 "
                      "(further resyncs are not reported)", RuntimeWarning, stacklevel=2)
