"""`train.micro_batch_size`: the per-process micro-batch, set by hand or found (`auto`), and kept fitting.

`train.batch_size` stays the global batch whatever the micro-batch: an update takes the same samples and the
same lr, and gradient accumulation makes up the rest (accumulation = batch_size / (processes x micro-batch)).
So a run whose micro-batch was found, or halved mid-run, trains as one with the accumulation set by hand,
up to float rounding (the sum over micro-batches is grouped differently).

`auto` searches, as Accelerate's `find_executable_batch_size` and Composer's auto micro-batching do: a trial
(forward and backward of one micro-batch of the next update's samples on the user's module, no optimizer
step) at the whole per-process batch, then at each smaller divisor of it (halving), until one raises no
out-of-memory error. A trial leaves no trace: no step, gradients cleared, module buffers (BatchNorm's running
statistics) and every RNG restored, the data position unchanged. Each rank searches alone (a trial runs no
collective, so a rank that runs out of memory cannot leave another waiting in one); then one gather agrees on
the smallest choice, which fits everywhere since smaller micro-batches fit where larger ones did. A resume
takes the checkpoint's micro-batch instead of searching again.

Later in an `auto` run, `AdaptiveUpdate` catches an out-of-memory error before the optimizer step, halves the
micro-batch, doubles the accumulation and redoes the update on the same samples. Under several processes the
ranks must decide alike without one waiting in a collective that another never reaches: they agree (one small
all-reduce on a gloo group, no device sync) before the last micro-batch's forward and again before its
backward, the points where DDP's collectives begin. Not redone: an error in the last backward under several
processes (the others are in its gradient all-reduce; the run fails as before), in the optimizer step (half an
update cannot be undone), with a streamed data source (it cannot be read again), or at a micro-batch of 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size
from torch import nn

from template.config import TrainConfig
from template.data import TrainData
from template.errors import ConfigError, MemoryLimitError, describe
from template.runtime.clock import Clock
from template.runtime.distributed import plain_model
from template.runtime.rng import preserved_rng

AUTO = "auto"
KEY = "train.micro_batch_size"


def out_of_memory(exc: BaseException) -> bool:
    """CUDA's `torch.OutOfMemoryError`, and the other allocators' errors Accelerate's search also retries on."""
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, Exception) and should_reduce_batch_size(exc))


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of `n` that is at most `at_most` (>= 1): a micro-batch that splits the batch evenly."""
    return max(d for d in range(1, at_most + 1) if n % d == 0)


def halving(per_rank: int, start: int) -> list[int]:
    """`start`, then repeatedly the largest divisor of `per_rank` at most half the previous, down to 1."""
    sizes = [start]
    while sizes[-1] > 1:
        sizes.append(largest_divisor(per_rank, sizes[-1] // 2))
    return sizes


def initial_accum(t: TrainConfig, world: int) -> int:
    """The accumulation an update starts with; every bad pairing of the batch keys is a ConfigError.

    null: train.grad_accum_steps. A number: derived (batch_size / (world x micro)); a grad_accum_steps other
    than 1 must then agree. `auto`: train.grad_accum_steps, where the search starts (1: the whole batch)."""
    micro = t.micro_batch_size
    if micro is None or micro == AUTO:
        return t.grad_accum_steps
    per_rank = t.batch_size // world
    if t.batch_size % world or per_rank % int(micro):
        raise ConfigError(KEY, f"{micro} does not divide the per-process batch {t.batch_size / world:g} "
                               f"(train.batch_size {t.batch_size} / {world} processes)")
    accum = per_rank // int(micro)
    if t.grad_accum_steps not in (1, accum):
        raise ConfigError(KEY, f"{micro} per process makes {accum} accumulation steps on {world} process"
                               f"{'es' if world > 1 else ''}, but "
                               f"train.grad_accum_steps is {t.grad_accum_steps}: set one of the two")
    return accum


class MicroBatch:
    """This run's per-process micro-batch and accumulation; the checkpoint's `micro_batch` entry (the size an
    `auto` run found, which a resume reuses). What the rows and summary.json say about it."""

    optional = True  # a checkpoint written before this entry existed resumes as if it held no size

    def __init__(self, t: TrainConfig, world: int) -> None:
        self.mode, self.per_rank = t.micro_batch_size, t.batch_size // world
        self.accum = initial_accum(t, world)
        self.size = self.per_rank // self.accum
        self.saved: int | None = None  # the size a checkpoint's auto run used
        self.halved_at: list[int] = []  # updates redone with a halved micro-batch
        self._reported: int | None = None

    @property
    def auto(self) -> bool:
        return self.mode == AUTO

    def set(self, size: int) -> None:
        self.size, self.accum = size, self.per_rank // size

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size if self.auto else None, "halved_at": self.halved_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = state.get("size")
        if self.auto and self.saved:
            self.halved_at = list(state.get("halved_at", []))

    def choose(self, accelerator: Accelerator, model: nn.Module, loss_fn: nn.Module, data: TrainData) -> None:
        """`auto`: the checkpoint's size (the largest divisor of this run's per-process batch not above it),
        else the search; every rank ends with the same size, and `data` is cut to it."""
        if not self.auto:
            return
        start = self.size
        if self.saved:
            self.set(largest_divisor(self.per_rank, min(self.saved, start)))
            how = "the checkpoint's"
        else:
            if accelerator.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU,
                                                    DistributedType.MULTI_GPU):
                raise ConfigError(KEY, f"auto searches on the user's module, which a sharded run "
                                       f"({accelerator.distributed_type}) splits across ranks: set a number")
            size, failed = search(accelerator, model, loss_fn, data, halving(self.per_rank, start))
            self.set(size)
            how = f"found; {', '.join(map(str, failed))} ran out of memory" if failed else "found"
        data.regroup(self.accum)
        accelerator.print(f"micro-batch: {self.size} per process x {self.accum} accumulation steps "
                          f"({KEY}: auto, {how})")

    def row(self) -> dict[str, int]:
        """`micro_batch_size` for the next metrics row: in an auto run's first row and after every change."""
        if not self.auto or self._reported == self.size:
            return {}
        self._reported = self.size
        return {"micro_batch_size": self.size}

    def summary(self) -> dict[str, Any]:
        if self.mode is None:
            return {}
        extra = {"micro_batch_halved_at": self.halved_at} if self.auto else {}
        return {"micro_batch_size": self.size, "grad_accum_steps": self.accum, **extra}


# ------------------------------------------------------------------------------------------------
# The search
# ------------------------------------------------------------------------------------------------


@contextmanager
def kept_buffers(module: nn.Module) -> Iterator[None]:
    """Put the module's buffers back on exit: a trial's forward must not move BatchNorm's running statistics."""
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def trial(module: nn.Module, loss_fn: nn.Module, x: Any, y: Any, autocast: Callable[[], Any]) -> str:
    """One forward and backward; '' if it fit, else the out-of-memory error in one line. Grads cleared."""
    try:
        with autocast():
            loss = loss_fn(module(x), y)
        loss.backward()
        return ""
    except Exception as exc:
        if not out_of_memory(exc):
            raise
        return describe(exc)
    finally:
        for param in module.parameters():
            param.grad = None


def search(accelerator: Accelerator, model: nn.Module, loss_fn: nn.Module, data: TrainData,
           sizes: list[int]) -> tuple[int, list[int]]:
    """The largest of `sizes` that fits on every rank, and the sizes that did not; ConfigError if none fits."""
    module, device = plain_model(accelerator, model), accelerator.device
    found, failed, why = 0, [], ""
    with preserved_rng(), kept_buffers(module), accelerator.no_sync(model):
        x, y = data.peek()
        for size in sizes:
            why = trial(module, loss_fn, x[:size].to(device), y[:size].to(device), accelerator.autocast)
            if not why:
                found = size
                break
            failed.append(size)
            clear_device_cache(garbage_collection=True)  # what the failed trial held, before the next
    results = gather_object([(found, why)]) if accelerator.num_processes > 1 else [(found, why)]
    chosen = min(size for size, _ in results)
    if chosen == 0:
        rank = next(r for r, (size, _) in enumerate(results) if size == 0)
        where = f" on rank {rank}" if accelerator.num_processes > 1 else ""
        raise ConfigError(KEY, f"auto: no micro-batch fits: the smallest, {sizes[-1]} sample(s) per process, ran "
                               f"out of memory{where} in a trial forward and backward ({results[rank][1]})")
    return chosen, [size for size in sizes if size > chosen]


# ------------------------------------------------------------------------------------------------
# Mid-run: halve and redo
# ------------------------------------------------------------------------------------------------


class PeerOutOfMemory(Exception):
    """Another rank ran out of memory in this update: every rank redoes it with a smaller micro-batch."""

    def __init__(self, ranks: list[int]) -> None:
        super().__init__(f"out of memory on rank {', '.join(map(str, ranks))}")
        self.ranks = ranks


class AdaptiveUpdate:
    """An `UpdateStep` (same call) that halves the micro-batch and redoes the update when it runs out of
    memory before the optimizer step; see the module docstring for where the ranks agree and what is not
    redone."""

    def __init__(self, update: Any, micro: MicroBatch, data: TrainData, clock: Clock, accelerator: Accelerator,
                 timeout_s: float) -> None:
        self.update, self.micro, self.data, self.clock = update, micro, data, clock
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.is_main = accelerator.is_main_process
        self.stepping, self.reason, self._losses = False, "", 0
        optimizer = getattr(update.optimizer, "optimizer", update.optimizer)  # under Accelerate's wrapper
        optimizer.register_step_pre_hook(lambda *_: setattr(self, "stepping", True))
        self.group: Any = None
        self.pending: list[str] = []  # this attempt's agreements still ahead
        if self.world > 1:
            if accelerator.device.type == "cuda":  # flags on the host: no device sync, apart from NCCL's streams
                self.group = torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
            self.loss_fn = update.loss_fn
            update.loss_fn = self._loss_then_agree

    def __call__(self, batches: Iterator[Any], want_norm: bool) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        while True:
            handed, self.stepping, self._losses = self.data.handed_out, False, 0
            self.pending = []
            if self.world > 1:
                self.pending = ["forward", "backward"] if self.update.accum > 1 else ["backward"]
            try:
                return self.update(self._agreeing(batches) if self.world > 1 else batches, want_norm)
            except PeerOutOfMemory as exc:
                ranks = exc.ranks
            except Exception as exc:
                if not out_of_memory(exc) or self.stepping or (self.world > 1 and not self.pending):
                    raise  # a half-applied step, or other ranks already in the gradient all-reduce
                ranks = self._agree(failed=True) if self.world > 1 else [self.rank]
                self.reason = describe(exc)
            self._halve(handed, ranks)

    # the agreements: before the last micro-batch's forward (accum > 1) and before its backward
    def _agreeing(self, batches: Iterator[Any]) -> Iterator[Any]:
        for micro in range(self.update.accum):
            if micro and micro == self.update.accum - 1:
                self._check()
            yield next(batches)

    def _loss_then_agree(self, output: Any, target: Any) -> torch.Tensor:
        loss = self.loss_fn(output, target)
        self._losses += 1
        if self._losses == self.update.accum:
            self._check()
        return loss

    def _check(self) -> None:
        ranks = self._agree(failed=False)
        if ranks:
            raise PeerOutOfMemory(ranks)

    def _agree(self, failed: bool) -> list[int]:
        """The ranks that ran out of memory in this update, the same list on every rank (one all-reduce)."""
        self.pending.pop(0)
        flags = torch.zeros(self.world, dtype=torch.int32)
        flags[self.rank] = int(failed)
        torch.distributed.all_reduce(flags, group=self.group)
        return flags.nonzero().flatten().tolist()

    def _halve(self, handed: int, ranks: list[int]) -> None:
        old, step = self.micro.size, self.clock.step + 1
        where = f"on rank {', '.join(map(str, ranks))}" if self.world > 1 else f"({self.reason[:160]})"
        smaller = halving(self.micro.per_rank, old)[1:2]
        if not smaller or not self.data.rewindable:
            why = "a streamed data source cannot be read again" if smaller else "it cannot be halved"
            raise MemoryLimitError(f"update {step} ran out of memory with a micro-batch of {old} per process "
                                   f"{where}, and {why} (train.micro_batch_size: auto)")
        for param in self.update.model.parameters():
            param.grad = None
        model = self.update.model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            # a rank may have run the last forward (DDP then expects its backward): forget that on every rank
            # alike, as torch's own elastic `_update_process_group` does
            model.reducer._reset_state()
        clear_device_cache(garbage_collection=True)
        self.micro.set(smaller[0])
        self.update.accum = self.micro.accum
        self.data.regroup(self.micro.accum, handed)
        self.micro.halved_at.append(step)
        if self.is_main:
            print(f"note: update {step} ran out of memory with micro-batch {old} {where}; redoing it with "
                  f"micro-batch {self.micro.size} x {self.micro.accum} accumulation steps", flush=True)
