#!/usr/bin/env python
"""What a sharded checkpoint costs against a gathered (full) one, per rank: save time and peak memory.

    accelerate launch --multi_gpu --num_processes 2 scripts/checkpoint_cost.py [--layers 8] [--width 512]

Builds the GPT at the given size, shards it as `distributed.shard: fsdp2` does, makes one AdamW update (so the
optimizer holds its two moments), then writes the model and optimizer twice into a temporary directory:
sharded (every rank writes its shards with torch.distributed.checkpoint, what the trainer does) and gathered
(full tensors assembled on rank 0, which writes one file: what a checkpoint without sharding needs). Prints
one JSON line per rank and method: seconds, the peak resident (CPU) or allocated (CUDA) memory during the
save above what the rank held before it, and the bytes written.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from template.models.gpt import GPT
from template.reporting.memory import GB, PeakMemory
from template.runtime import sharding


def now_gb(device: torch.device) -> float:
    """What this rank holds now: CUDA allocated bytes, or the resident set (VmRSS)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / GB
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GB
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(dist.get_rank() % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = GPT(vocab_size=256, block_size=64, n_layer=args.layers, n_head=8, n_embd=args.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sharding.shard_model(model, sharding.shard_units(model, []), optimizer, device, None, compile_units=False)
    x = torch.randint(0, 256, (2, 64), device=device)
    model(x).float().square().mean().backward()
    optimizer.step()
    memory = PeakMemory(device)
    with tempfile.TemporaryDirectory() as tmp:
        shared = [tmp]
        dist.broadcast_object_list(shared)  # rank 0's directory for every rank (one machine)
        out = Path(shared[0])
        results = []
        for method in ("sharded", "gathered"):
            target = out / method
            target.mkdir(exist_ok=True)
            dist.barrier()
            memory.window()  # reset the peak counters: the next reading is the peak during this save
            before = now_gb(device)
            start = time.perf_counter()
            if method == "sharded":
                sharding.save_sharded(target, model, optimizer, {})
            else:
                from torch.distributed.checkpoint.state_dict import (
                    StateDictOptions,
                    get_model_state_dict,
                    get_optimizer_state_dict,
                )

                full = StateDictOptions(full_state_dict=True, cpu_offload=True)
                state = {"model": get_model_state_dict(model, options=full),
                         "optimizer": get_optimizer_state_dict(model, optimizer, options=full)}
                if rank == 0:
                    torch.save(state, target / "full.pt")
                del state
            dist.barrier()
            seconds = time.perf_counter() - start
            peak = next(iter(memory.window().values()))
            written = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
            results.append({"rank": rank, "method": method, "seconds": round(seconds, 3),
                            "peak_above_gb": round(max(0.0, peak - before), 4), "peak_gb": round(peak, 4),
                            "written_mb": round(written / 2**20, 1), "device": device.type,
                            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                            "state_gb_this_rank": round(sharding.local_bytes(model, optimizer) / GB, 4)})
        for row in results:
            print(json.dumps(row), flush=True)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
