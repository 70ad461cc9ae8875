"""Pretrain the GPT decoder on text: ``python experiments/pretrain.py [--config tiny|small|gpt2-124m] ...``.

The same run as the ``energyformer pretrain`` command (``--help`` lists the options).
"""
import sys

from energyformer.cli import main

if __name__ == "__main__":
  main(["pretrain", *sys.argv[1:]])
