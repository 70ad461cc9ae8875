"""Attention variants on the LIS task: ``python experiments/lis.py [--preset tiny|default|paper] ...``.

The same study as the ``energyformer lis`` command (``--help`` lists the options).
"""
import sys

from energyformer.cli import main

if __name__ == "__main__":
  main(["lis", *sys.argv[1:]])
