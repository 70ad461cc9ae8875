"""The ``pretrain`` command: its options and the run they configure.

Heavy modules are imported only when the command runs, so ``energyformer --help`` stays fast.
"""
from __future__ import annotations

def _pretrain(parser, args) -> None:
  from energyformer.data.text import check_corpus
  from energyformer.train import mesh, pretrain
  if args.distributed:
    mesh.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  try:
    config = pretrain.configure(args.config, variant=args.variant, steps=args.steps, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, mesh=args.mesh, corpus=args.data,
                                data_dir=args.data_dir, patterns=args.patterns, bf16=args.bf16, checkpoint_every=args.checkpoint_every,
                                seed=args.seed)
    check_corpus(config.data)
  except (ValueError, FileNotFoundError) as error:
    parser.error(str(error))
  pretrain.run(config, args.out)


def add_commands(commands) -> None:
  """Adds ``pretrain`` to the ``energyformer`` subcommands."""
  command = commands.add_parser(
      "pretrain", help="pretrain the GPT decoder on text (byte-level), sharded over a device mesh, resumable",
      description="Pretrains the GPT-style decoder with any attention variant on a text corpus. Rerunning with "
                  "the same --out resumes from the newest checkpoint; SIGTERM or Ctrl-C saves one and stops.")
  command.add_argument("--config", default="tiny", help="tiny (CPU, minutes), small (one GPU), gpt2-124m (GPUs, TPU)")
  command.add_argument("--variant", help="attention variant: standard (default), tied, momentum, nesterov, newton, "
                                         "light_newton, linear or gated_linear")
  command.add_argument("--steps", type=int, help="training steps")
  command.add_argument("--batch-size", type=int, help="global batch size (sequences per step, all devices)")
  command.add_argument("--learning-rate", type=float, help="peak AdamW learning rate")
  command.add_argument("--mesh", help="single, data, fsdp, fsdp_tp, or sizes such as fsdp=4,tensor=2 "
                                      "(default: data parallel over every device)")
  command.add_argument("--data", help="'stdlib' (default: the Python standard library's source), a directory of "
                                      "*.txt files, or tfds:NAME (e.g. tfds:lm1b; needs network the first time)")
  command.add_argument("--patterns", nargs="+", help="file patterns of a --data directory (default: *.txt)")
  command.add_argument("--data-dir", help="where tfds datasets are written and read "
                                          "(default: $ENERGYFORMER_DATA_DIR or ~/.cache/energyformer/datasets)")
  command.add_argument("--bf16", action="store_true", default=None, help="compute in bfloat16 (float32 parameters)")
  command.add_argument("--checkpoint-every", type=int, help="save a checkpoint every N steps")
  command.add_argument("--seed", type=int, help="seed of the initialisation and the data order")
  command.add_argument("--out", default="runs/pretrain",
                       help="directory for checkpoints, metrics.jsonl, tensorboard/, val_loss.png, summary.json")
  command.add_argument("--distributed", action="store_true",
                       help="multi-host: call jax.distributed.initialize first (auto-detected on TPU pods, SLURM, "
                            "Open MPI; elsewhere also pass --coordinator, --num-processes, --process-id)")
  command.add_argument("--coordinator", help="host:port of process 0 (multi-host without auto-detection)")
  command.add_argument("--num-processes", type=int, help="number of processes (multi-host)")
  command.add_argument("--process-id", type=int, help="this process's index (multi-host)")
  command.set_defaults(handler=_pretrain)
