#!/usr/bin/env python
"""Sample text from a finished (or checkpointed) run of a token model, and print it.

    python scripts/sample.py --run runs/gpt [--prompt TEXT] [--length N] [--seed S] [--temperature T]
        [--top-k K] [--device cpu|cuda]

The model is rebuilt from the run's `config.yaml` (`model.name`, `model.kwargs`, and `imports:` for a fork's
own model) and loaded from its `model.safetensors` (a `model` artifact of `tracking.log_model` holds both);
text is encoded and decoded with the run's `tokenizer.json`, else its token files' (`data.kwargs.dir`), else
as bytes. Sampling is `template.models.sampling.generate`, the function the `sample_text` hook uses: the same
seed, weights and device give the same text. A directory without those files, a model that is not a token
model or a prompt longer than its context: exit 2, one `error:` line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

from template.cli import fail
from template.data.text import TextCodec
from template.errors import ConfigError, describe
from template.models import MODELS
from template.models.sampling import context_length, generate, prompt_problem, token_model_vocab


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2, like every other bad input
        fail(f"arguments: {message}")


def load_run(run: Path, device: torch.device) -> tuple[nn.Module, TextCodec]:
    """The run's model with its final weights (eval mode, on `device`) and its codec; ConfigError naming --run."""
    missing = [name for name in ("config.yaml", "model.safetensors") if not (run / name).is_file()]
    if missing:
        raise ConfigError("--run", f"{run} has no {' and no '.join(missing)} (a finished run's output_dir has both)")
    cfg = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=True)
    assert isinstance(cfg, dict)
    for name in cfg.get("imports") or []:  # a fork's own model registers when its module is imported
        importlib.import_module(name)
    model_cfg = cfg.get("model") or {}
    model = MODELS.build(model_cfg.get("name", ""), **(model_cfg.get("kwargs") or {}))
    try:
        model.load_state_dict(load_file(str(run / "model.safetensors"), device="cpu"))
    except RuntimeError as exc:
        raise ConfigError("--run", f"{run / 'model.safetensors'} does not fit the model of its config.yaml: "
                                   f"{describe(exc)}") from None
    data_dir = ((cfg.get("data") or {}).get("kwargs") or {}).get("dir")
    return model.to(device).eval(), TextCodec.for_run(run, data_dir)


def main(argv: list[str] | None = None) -> None:
    p = _Parser(description="Sample text from a run's model.safetensors.")
    p.add_argument("--run", required=True, type=Path, help="the run's output_dir (config.yaml, model.safetensors)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--length", type=int, default=200, help="new tokens to sample (default 200)")
    p.add_argument("--seed", type=int, default=0, help="the sampling generator's seed (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="0: always the most likely token (default 1)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K most likely tokens only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    if args.length < 1:
        fail(f"--length: must be >= 1, got {args.length}")
    if args.temperature < 0 or (args.top_k is not None and args.top_k < 1):
        fail(f"--temperature/--top-k: need temperature >= 0 and top-k >= 1, got {args.temperature}, {args.top_k}")
    try:
        device = torch.device(args.device)
        model, codec = load_run(args.run, device)
        try:
            vocab = token_model_vocab(model)
        except ValueError as exc:
            raise ConfigError("--run", f"the model of {args.run} is not a token model: {exc}") from None
        ids = codec.encode(args.prompt)
        problem = prompt_problem(ids, vocab, context_length(model), codec.name)
        if problem:
            raise ConfigError("--prompt", problem)
        generator = torch.Generator(device=device).manual_seed(args.seed)
        new = generate(model, torch.tensor(ids), args.length, args.temperature, args.top_k, generator)
    except ConfigError as exc:
        fail(str(exc))
    print(args.prompt + codec.decode(new[0].tolist()), flush=True)


if __name__ == "__main__":
    main()
