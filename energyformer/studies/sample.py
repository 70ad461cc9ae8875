"""Sampling text from a pretraining run: the ``energyformer sample`` command.

``load_run`` rebuilds the decoder a run trained (its configuration is saved with every checkpoint) and restores
the parameters of a checkpoint; the tokenizer is the one saved in the run directory (``data.tokenizers``). A
prompt is continued as the start of a document: the end-of-document id, which precedes every document in the
packed training stream, then the prompt's ids without an end-of-document id of their own.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from energyformer import cli
from energyformer.checks import check_positive_int
from energyformer.data import tokenizers
from energyformer.models import GPT, GPTConfig
from energyformer.models.decode import cache_support, check_sampling, generate
from energyformer.studies.decoder import decoder_config
from energyformer.train.checkpoint import CheckpointConfig, Checkpointer
from energyformer.train.config import from_dict
from energyformer.train.programs import model_settings


def _checkpointer(run_dir) -> Checkpointer:
  directory = pathlib.Path(run_dir) / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoints in {str(run_dir)!r} (no {directory.name}/ folder); pass the --out "
                            "directory of an `energyformer pretrain` run.")
  return Checkpointer(directory, CheckpointConfig(every=None, async_save=False))


def saved_decoder_config(run: dict, member: int = 0) -> GPTConfig:
  """The decoder configuration of member ``member`` of a checkpoint's saved ``run`` (its task's model with the
  member's own settings)."""
  identity = run.get("identity", {})
  if "model" not in identity.get("task", {}):
    raise ValueError("the checkpoint is not of a decoder pretraining run (its task has no model configuration); "
                     "sample from the output directory of `energyformer pretrain`.")
  members = identity.get("members") or [{}]
  if not 0 <= member < len(members):
    raise ValueError(f"the run has {len(members)} member(s); pick a member index in [0, {len(members)}).")
  return decoder_config(from_dict(GPTConfig, identity["task"]["model"]), model_settings(members[member]))


def load_run(run_dir, *, step: int | None = None, member: int = 0) -> tuple[GPT, int]:
  """``(model, step)``: the decoder of ``run_dir`` with the parameters of checkpoint ``step`` (default: the
  newest), member ``member`` of the saved population, in float32 on the default device."""
  checkpointer = _checkpointer(run_dir)
  try:
    steps = checkpointer.steps()
    if not steps:
      raise FileNotFoundError(f"{checkpointer.directory} holds no checkpoint yet; train first (energyformer pretrain "
                              f"--out {run_dir}).")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise ValueError(f"no checkpoint of step {step} in {checkpointer.directory}; saved steps are {steps}.")
    run = checkpointer.saved_run(step)
    config = saved_decoder_config(run, member)
    graph, abstract = nnx.split(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))))
    count = len(run["identity"].get("members") or [{}])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct((count, *x.shape), x.dtype, sharding=device), abstract)
    restored = checkpointer.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  finally:
    checkpointer.close()
  return nnx.merge(graph, jax.tree.map(lambda x: x[member], restored["state"])), step


def prompt_tokens(tokenizer, prompt: str) -> np.ndarray:
  """The ids (1, P) of ``prompt`` as the start of a document: end-of-document, then the prompt without one."""
  return np.concatenate([[tokenizer.eos_id], tokenizer.encode(prompt, add_end=False)]).astype(np.int32)[None]


def continuation(tokenizer, tokens) -> str:
  """The text of generated ids up to the first end-of-document (where the sampled document ends)."""
  tokens = np.asarray(tokens).reshape(-1)
  ends = np.flatnonzero(tokens == tokenizer.eos_id)
  return tokenizer.decode(tokens[:ends[0]] if ends.size else tokens)


def prepare(run_dir, prompt: str, num_tokens: int | None = None, *, step: int | None = None):
  """``(model, step, tokenizer, prompt ids (1, P), num_tokens)`` for continuing ``prompt`` by ``num_tokens``
  tokens (default: up to the end of the model's context); raises when the run, its tokenizer or the length does not
  fit."""
  if num_tokens is not None:
    check_positive_int("num_tokens", num_tokens)
  model, step = load_run(run_dir, step=step)
  tokenizer = tokenizers.load_tokenizer(run_dir)
  if tokenizer.vocab_size > model.config.vocab_size:
    raise ValueError(f"the run's tokenizer has {tokenizer.vocab_size} ids but its model only "
                     f"{model.config.vocab_size}; {run_dir}/{tokenizers.FILE_NAME} is not this run's tokenizer.")
  ids = prompt_tokens(tokenizer, prompt)
  room = model.config.context_length - ids.shape[1]
  num_tokens = room if num_tokens is None else num_tokens
  if num_tokens > room or room < 1:
    raise ValueError(f"the prompt takes {ids.shape[1]} of the model's {model.config.context_length} positions, "
                     f"leaving room for {max(room, 0)} new tokens, not {num_tokens}; pass --num-tokens {max(room, 1)} "
                     "or a shorter prompt.")
  return model, step, tokenizer, ids, num_tokens


def continue_prompt(prepared, *, temperature: float = 0.8, top_k: int | None = None,
                    top_p: float | None = None, seed: int = 0, cache: bool = True) -> dict:
  """Continues ``prepare``'s prompt by its number of tokens with ``models.decode.generate``; returns ``{"text",
  "step", "num_tokens", "tokens_per_second", "cached"}`` (the rate includes compilation)."""
  model, step, tokenizer, ids, num_tokens = prepared
  began = time.perf_counter()
  tokens = generate(model, jnp.asarray(ids), num_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                    key=jax.random.key(seed), cache=cache)
  new = np.asarray(tokens)[0, ids.shape[1]:]
  seconds = time.perf_counter() - began
  return {"text": continuation(tokenizer, new), "step": step, "num_tokens": num_tokens,
          "tokens_per_second": num_tokens / seconds,
          "cached": cache and cache_support(model) is None}


def sample(run_dir, prompt: str = "", *, num_tokens: int | None = None, step: int | None = None, **options) -> dict:
  """``prompt`` continued by ``num_tokens`` tokens of the run's decoder (``prepare``; ``continue_prompt``'s
  ``options`` and result)."""
  return continue_prompt(prepare(run_dir, prompt, num_tokens, step=step), **options)


def _options(command) -> None:
  command.add_argument("--run", dest="run_dir", default="runs/pretrain",
                       help="the --out directory of `energyformer pretrain`")
  command.add_argument("--prompt", default="", help="text to continue (as the start of a document)")
  command.add_argument("--num-tokens", type=int,
                       help="number of tokens to generate (default: up to the end of the model's context)")
  command.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 decodes greedily")
  command.add_argument("--top-k", type=int, help="sample among the k most likely tokens only (default: all tokens)")
  command.add_argument("--top-p", type=float,
                       help="nucleus sampling: the fewest most likely tokens reaching probability p (default: "
                            "all tokens)")
  command.add_argument("--seed", type=int, default=0, help="seed of the draws")
  command.add_argument("--step", type=int, help="checkpoint step to load (default: the newest)")
  command.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                       help="decode from cached contexts where the variant allows; --no-cache recomputes the whole "
                            "prefix for every token")


@cli.command("sample", help="generate text from a pretraining checkpoint (greedy, temperature, top-k, top-p)",
             description="Loads the newest (or --step) checkpoint of a pretraining run with the tokenizer it was "
                         "trained with and continues --prompt, decoding incrementally from cached contexts where "
                         "the attention variant allows.", options=_options)
def _command(args) -> None:
  with cli.user_settings():
    prepared = prepare(args.run_dir, args.prompt, args.num_tokens, step=args.step)
    check_sampling(args.temperature, args.top_k, args.top_p, prepared[0].config.vocab_size)
  result = continue_prompt(prepared, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           seed=args.seed, cache=args.cache)
  print(args.prompt + result["text"])
  way = "cached contexts" if result["cached"] else "full recomputation"
  print(f"-- step {result['step']} of {args.run_dir}, {result['num_tokens']} tokens by {way}, "
        f"{result['tokens_per_second']:.0f} tokens/s (compilation included)")
