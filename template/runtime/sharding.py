"""`distributed.shard: fsdp2`: parameters, gradients and optimizer state sharded across the processes.

The trainer shards the model itself with torch's FSDP2 (`fully_shard`), as torchtitan does, and Accelerate
keeps what it does well here: launching, the process group, the device, autocast and the trackers. So the
same code runs on CPU processes over gloo and on GPUs over NCCL; Accelerate's own FSDP path is enabled only
from a launch on several GPUs, so it could never run (or be tested) on one GPU or on CPU.

Order, as torchtitan orders it: activation checkpointing (the model's own, e.g. the GPT's
`checkpoint_activations`), then `torch.compile` per unit, then `fully_shard` per unit and once more over the
root (what is left: embeddings, head, final norm). A unit is a submodule whose parameters are gathered for
its forward and freed after it: the GPT's blocks, the MLP's linear layers, a fork's model through a
`shard_units()` method or `distributed.shard_units` (name globs).

Checkpoints are written by every rank in shards with `torch.distributed.checkpoint` (DCP), never gathered on
one rank, and DCP reads back whatever shards the new world size needs: a sharded checkpoint resumes on any
number of processes, and a plain (DDP) checkpoint's full tensors load into a sharded run.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import nn

from template.errors import ConfigError

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

# torch.distributed's FSDP, DTensor and checkpoint modules are imported where they are used (0.6 s, sympy among
# them): `--help`, a config error or a script that builds no optimizer never pays for them (torch's optimizers
# import dynamo, which imports them), and nothing can be sharded before they are imported.

PLACEHOLDER = "__shard__"  # in trainer.pt: where an entry's DTensor was (its shards are in sharded/)
SHARDED_DIR = "sharded"  # a checkpoint's DCP files (model and optimizer shards of every rank)
UNITS_KEY = "distributed.shard_units"


def is_sharded(model: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def is_dtensor(value: Any) -> TypeGuard[DTensor]:
    """Whether `value` is a DTensor (a shard), without importing DTensor where nothing could be one."""
    tensor = sys.modules.get("torch.distributed.tensor")
    return tensor is not None and isinstance(value, tensor.DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor, or the tensor itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def shard_units(model: nn.Module, patterns: list[str]) -> list[tuple[str, nn.Module]]:
    """The submodules to shard one by one, by name: `patterns` (fnmatch globs on module names) if given, else
    the model's `shard_units()`, else every nn.Linear. ConfigError when there is none or a glob matches none."""
    named = dict(model.named_modules())
    if patterns:
        units: list[tuple[str, nn.Module]] = []
        for pattern in patterns:
            found = [(n, m) for n, m in named.items() if n and fnmatch.fnmatchcase(n, pattern)]
            if not found:
                raise ConfigError(UNITS_KEY, f"'{pattern}' matches no submodule of {type(model).__name__} "
                                             f"(some names: {', '.join(list(n for n in named if n)[:6])})")
            units += found
    elif hasattr(model, "shard_units"):
        by_module = {id(m): n for n, m in named.items()}
        units = [(by_module[id(m)], m) for m in model.shard_units()]  # type: ignore[operator]
    else:
        units = [(n, m) for n, m in named.items() if isinstance(m, nn.Linear)]
    units = [(n, m) for n, m in units if any(True for _ in m.parameters())]
    if not units:
        raise ConfigError(UNITS_KEY, f"{type(model).__name__} has no submodule with parameters to shard: name "
                                     "them (module name globs) or give the model a shard_units() method")
    names = [n for n, _ in units]
    nested = next(((a, b) for a in names for b in names if b.startswith(a + ".")), None)
    if nested:
        raise ConfigError(UNITS_KEY, f"'{nested[1]}' lies inside '{nested[0]}': units must not nest")
    return units


def own_process_group(device: torch.device) -> Callable[[], None]:
    """FSDP2 needs a process group even for one process, where Accelerate starts none: start a one-rank group
    (no network: an in-memory store) and return what destroys it; a no-op when a launcher's group exists."""
    if torch.distributed.is_initialized():
        return lambda: None
    backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    return torch.distributed.destroy_process_group


def shard_model(model: nn.Module, units: list[tuple[str, nn.Module]], optimizer: torch.optim.Optimizer,
                device: torch.device, mixed_precision: str | None, compile_units: bool) -> nn.Module:
    """Compile (if asked) and shard each unit, then the root, in place; the optimizer is pointed at the
    sharded parameters (fully_shard replaces each Parameter by a DTensor one under the same name)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    before = dict(model.named_parameters())
    model.to(device)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if mixed_precision == "bf16" else MixedPrecisionPolicy()
    for _, unit in units:
        if compile_units:
            unit.compile()  # in place: names stay plain
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    after = dict(model.named_parameters())
    swap = {id(param): after[name] for name, param in before.items()}
    for group in optimizer.param_groups:
        group["params"] = [swap[id(p)] for p in group["params"]]
    for old in [p for p in optimizer.state if id(p) in swap]:  # state kept from the start (RandomScaledSGD's)
        optimizer.state[swap[id(old)]] = optimizer.state.pop(old)
    return model


def reshard(model: nn.Module) -> None:
    """Put the sharded parameters back after a forward without backward (evaluation): FSDP2 keeps the root's
    parameters gathered after its forward, expecting the backward, and a hook would see full plain tensors."""
    for module in model.modules():
        if is_sharded(module):
            module.reshard()  # type: ignore[operator]


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Reduce-scatter the gradients in this backward (the last micro-batch) or keep them local (accumulating)."""
    model.set_requires_gradient_sync(sync)  # type: ignore[operator]


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip over sharded gradients: the total norm is over every shard (one all-reduce), then each
    rank scales its shard by the same factor."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if is_dtensor(total):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def local_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes this rank holds of the parameters and the optimizer state (its shards only, when sharded)."""
    def size(t: torch.Tensor) -> int:
        part = local(t)
        return part.numel() * part.element_size()

    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += size(p)
    for state in optimizer.state.values():
        total += sum(size(v) for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    return total


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full tensors under the plain names, on CPU, on rank 0 (a collective; other ranks get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)  # type: ignore[return-value]


def split_shards(tree: Any, path: str = "entries") -> tuple[Any, dict[str, DTensor]]:
    """`tree` with every DTensor (an entry's shards, e.g. the EMA's) replaced by a placeholder naming its path,
    shape and dtype, and those DTensors by path: they are written with the model's shards, not on rank 0."""
    shards: dict[str, DTensor] = {}

    def walk(node: Any, where: str) -> Any:
        if is_dtensor(node):
            shards[where] = node
            return {PLACEHOLDER: where, "shape": list(node.shape), "dtype": str(node.dtype).removeprefix("torch.")}
        if isinstance(node, dict):
            return {k: walk(v, f"{where}/{k}") for k, v in node.items()}
        if isinstance(node, list | tuple):
            return type(node)(walk(v, f"{where}/{i}") for i, v in enumerate(node))
        return node

    return walk(tree, path), shards


def _fill_shards(tree: Any, mesh: Any) -> tuple[Any, dict[str, DTensor]]:
    """The reverse of `split_shards`: empty DTensors (sharded over `mesh` as FSDP2 shards, dim 0) in place of
    the placeholders, for DCP to load into, whatever the number of ranks that wrote them."""
    from torch.distributed.tensor import Shard

    templates: dict[str, DTensor] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict) and PLACEHOLDER in node:
            empty = torch.distributed.tensor.empty(node["shape"], dtype=getattr(torch, node["dtype"]),
                                                   device_mesh=mesh, placements=[Shard(0)])
            templates[node[PLACEHOLDER]] = empty
            return empty
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return type(node)(walk(v) for v in node)
        return node

    return walk(tree), templates


def save_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 shards: dict[str, DTensor]) -> None:
    """Every rank writes its shards of the model, the optimizer and the entries' DTensors into
    `directory/sharded` (a collective); rank 0 writes DCP's metadata."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
             "entries": shards}
    dcp.save(state, checkpoint_id=str(directory / SHARDED_DIR))


def load_sharded(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, shared: dict[str, Any]) -> None:
    """Load a sharded checkpoint written by any number of ranks, or a plain one's full tensors (a collective);
    the placeholders in `shared` (trainer.pt's entries) are replaced by the loaded shards, in place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if (directory / SHARDED_DIR).is_dir():
        mesh = next(p.device_mesh for p in model.parameters() if is_dtensor(p))
        filled, templates = _fill_shards(shared, mesh)
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
                 "entries": templates}
        dcp.load(state, checkpoint_id=str(directory / SHARDED_DIR))
        set_model_state_dict(model, state["model"])  # type: ignore[arg-type]
        set_optimizer_state_dict(model, optimizer, state["optimizer"])  # type: ignore[arg-type]
        shared.update(filled)
        return
    from safetensors.torch import load_file  # a plain (DDP) checkpoint: Accelerate's model.safetensors, optimizer.bin

    set_model_state_dict(model, load_file(str(directory / "model.safetensors")),  # type: ignore[arg-type]
                         options=StateDictOptions(full_state_dict=True))
    saved = torch.load(directory / "optimizer.bin", map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, by_name(model, optimizer, saved))


def by_name(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """A plain optimizer state dict (parameters numbered in group order) keyed by parameter names instead and
    sharded like the parameters, the form torch's sharded loader takes (its full-state path needs a tensor in
    every optimizer's state, which RandomScaledSGD has not). The groups come from the same config: same order."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    numbered = [i for group in saved["param_groups"] for i in group["params"]]
    if len(numbered) != len(order):
        raise ConfigError("train.resume", f"the checkpoint's optimizer holds {len(numbered)} parameters, this "
                                          f"model {len(order)}")
    from torch.distributed.tensor import distribute_tensor

    fqn = dict(zip(numbered, order, strict=True))
    params = dict(model.named_parameters())

    def shard(value: Any, param: torch.Tensor) -> Any:  # a full tensor shaped like its parameter: this rank's part
        if isinstance(value, torch.Tensor) and is_dtensor(param) and value.shape == param.shape:
            return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
        return value

    state = {fqn[i]: {k: shard(v, params[fqn[i]]) for k, v in s.items()} for i, s in saved["state"].items()}
    groups = [{**g, "params": [fqn[i] for i in g["params"]]} for g in saved["param_groups"]]
    return {"state": state, "param_groups": groups}
