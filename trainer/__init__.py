"""primeflow.trainer: config, data, rollout, verifiers, the PRIME loop, checkpoints, metrics, CLI."""
