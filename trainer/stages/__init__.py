"""The stages of one PRIME step, one module each; trainer/train.py calls them in order."""
