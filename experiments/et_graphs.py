"""Energy Transformer graph anomaly detection: ``python experiments/et_graphs.py [--preset tiny|default] ...``.

The same study as the ``energyformer et-graphs`` command (``--help`` lists the options).
"""
import sys

from energyformer.cli import main

if __name__ == "__main__":
  main(["et-graphs", *sys.argv[1:]])
