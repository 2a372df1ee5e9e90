"""Datasets (DATASETS registry). A dataset builder takes (cfg, split) with split in
train / val / test and returns a torch Dataset whose items are looked up by `(epoch, index)`
keys from `data.sampling.EpochSampler`, so augmentation is a function of (seed, epoch, index).
"""
