"""``energyformer sample``: a checkpoint's decoder and tokenizer loaded back, prompts without a stray
end-of-document, and bad runs refused."""
import re

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from energyformer import cli
from energyformer.data import tokenizers
from energyformer.data.text import ByteTokenizer
from energyformer.models import GPT, GPTConfig, generate
from energyformer.studies import pretrain, sample
from energyformer.train.checkpoint import CheckpointConfig, Checkpointer
from energyformer.train.config import to_dict

CONFIG = GPTConfig(vocab_size=320, context_length=8, dim=8, num_heads=2, head_dim=4, depth=1, mlp_hidden=16,
                   variant="momentum", mlp="none", hparams={"beta": 0.3})


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A run directory holding one checkpoint (step 5) of a decoder, saved the way the trainer saves a population of
  one member whose own setting (``depth``) differs from the task's model."""
  out = tmp_path_factory.mktemp("run")
  member = {"seed": 0, "depth": 2, "learning_rate": 0.01}
  model = GPT(GPTConfig(**{**to_dict(CONFIG), "depth": 2}), rngs=nnx.Rngs(3))
  population = jax.tree.map(lambda x: x[None], nnx.state(model))
  run = {"identity": {"task": {"model": to_dict(CONFIG), "data": {}}, "members": [member], "batch_size": 1},
         "config": {}, "history": {"loss": [], "evaluations": []}}
  checkpointer = Checkpointer(out / "checkpoints", CheckpointConfig(every=1, async_save=False))
  checkpointer.save(5, population, {"count": jnp.zeros((1,))}, iter(grain.MapDataset.range(2).to_iter_dataset()),
                    run)
  checkpointer.close()
  return out, model


def test_prompts_carry_no_end_of_document():
  """``encode(add_end=False)`` is the UTF-8 bytes alone; a training document still ends with the end id; a
  prompt starts a document (end id first) and has no end id after its text."""
  tokenizer = ByteTokenizer()
  assert tokenizer.encode("hé", add_end=False).tolist() == list("hé".encode())
  assert tokenizer.encode("hé").tolist() == list("hé".encode()) + [256]
  assert sample.prompt_tokens(tokenizer, "hé").tolist() == [[256, *"hé".encode()]]
  assert sample.continuation(tokenizer, [104, 105, 256, 106]) == "hi"


def test_loaded_decoder_continues_like_the_saved_one(saved_run, capsys):
  """The command rebuilds the member's decoder (depth 2, β = 0.3) with the saved parameters bit for bit, and prints
  the prompt and its greedy continuation."""
  out, model = saved_run
  loaded, step = sample.load_run(out)
  assert step == 5 and loaded.config.depth == 2 and dict(loaded.config.hparams) == {"beta": 0.3}
  saved = jax.tree.leaves(nnx.state(model))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(loaded)), saved, strict=True))
  prompt = jnp.array([[256, ord("a"), ord("b")]], jnp.int32)
  expected = sample.continuation(ByteTokenizer(), generate(loaded, prompt, 4)[0, 3:])
  cli.main(["sample", "--run", str(out), "--prompt", "ab", "--num-tokens", "4", "--temperature", "0"])
  assert capsys.readouterr().out.startswith(f"ab{expected}\n-- step 5 of {out}, 4 tokens by cached contexts")


def test_prompts_are_read_with_the_runs_tokenizer(saved_run):
  """A BPE tokenizer saved in the run directory encodes the prompt (end-of-document first, none after it)."""
  out, _ = saved_run
  bpe = tokenizers.train_bpe(["energy state energy token state step"] * 20, 270)
  path = tokenizers.save_tokenizer(out, bpe)
  try:
    _, _, tokenizer, ids, count = sample.prepare(out, "energy state", 2)
  finally:
    path.unlink()
  assert tokenizer == bpe and count == 2
  assert ids.tolist() == [[bpe.eos_id, *bpe.encode("energy state", add_end=False).tolist()]]
  assert len(ids[0]) < len("energy state")


@pytest.mark.parametrize("arguments, message", [
    (["--run", "{tmp}"], "no checkpoints"),
    (["--run", "{run}", "--step", "7"], "saved steps are \\[5\\]"),
    (["--run", "{run}", "--prompt", "ab", "--num-tokens", "8"], "--num-tokens 5"),
    (["--run", "{run}", "--top-p", "1.5"], "top_p"),
])
def test_bad_runs_and_lengths_are_refused(arguments, message, saved_run, tmp_path, capsys):
  """A directory without checkpoints, a step never saved, a continuation past the context and a nucleus beyond
  probability 1 end with a message naming the fix, not a traceback."""
  arguments = [a.format(tmp=tmp_path, run=saved_run[0]) for a in arguments]
  with pytest.raises(SystemExit):
    cli.main(["sample", *arguments])
  assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_pretrain_then_sample_end_to_end(tmp_path):
  """A real three-step pretraining run, then ``sample`` from its directory: the sampled text is the greedy
  continuation of the model the trainer itself restores."""
  from train_fixtures import tiny_config, write_corpus
  config = tiny_config(write_corpus(tmp_path / "corpus", num_files=10), tmp_path / "datasets", steps=3, every=3)
  pretrain.run(config, tmp_path / "run", progress=False)
  restored = pretrain.train(config, tmp_path / "run", progress=False).model(0)
  expected = sample.continuation(ByteTokenizer(), generate(restored, jnp.array([[256, 101]], jnp.int32), 6)[0, 2:])
  result = sample.sample(tmp_path / "run", "e", num_tokens=6, temperature=0.0)
  assert result["step"] == 3 and result["text"] == expected
