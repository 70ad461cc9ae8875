"""Momentum β × learning rate for the momentum (MomenMHA) and Nesterov (NagMHA) variants on LIS.

One vmapped program per variant trains its 4 × 3 grid over two seeds; writes ``runs/sweep_lis/members.csv``,
``results.json``, ``metrics.jsonl`` and the heatmap ``val_accuracy.png`` (validation accuracy averaged over
seeds; β = 0 is plain gradient descent, i.e. the standard variant). Extra options are passed on to
``energyformer sweep`` (for example ``--steps 100`` or ``--out DIR``).
"""
import sys

from energyformer.cli import main

if __name__ == "__main__":
  main(["sweep", "--preset", "default", "--variants", "momentum", "nesterov", "--grid", "beta=0,0.3,0.6,0.9",
        "--grid", "learning_rate=1e-3,3e-3,1e-2", "--seeds", "2", "--out", "runs/sweep_lis", *sys.argv[1:]])
