"""Datasets for training and evaluating the decoders."""
from energyformer.data.lis import (MODES, SPLITS, EpochShuffled, LISConfig, LISSource, decode_answer, encode, generate,
                                   lis_brute_force, lis_dataset, lis_length, lis_sequence, numpy_split, solve,
                                   trivial_baselines)
from energyformer.data import graphs, images, sudoku
from energyformer.data import text
