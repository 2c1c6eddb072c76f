"""The stages that `python train.py STAGE` runs; each owns its run config."""
