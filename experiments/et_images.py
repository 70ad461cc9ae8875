"""Energy Transformer masked image completion: ``python experiments/et_images.py [--preset tiny|default|paper] ...``.

The same study as the ``energyformer et-images`` command (``--help`` lists the options).
"""
import sys

from energyformer.cli import main

if __name__ == "__main__":
  main(["et-images", *sys.argv[1:]])
