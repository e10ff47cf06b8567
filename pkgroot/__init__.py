"""primeflow: a PRIME (implicit process reward) RL trainer built on fused kernels, Megatron-core and vLLM.

Subpackages: `primeflow.kernels` (ops + references), `primeflow.models` (Megatron models, HF conversion,
tiny checkpoints), `primeflow.trainer` (config, data, rollout, verifiers, the PRIME loop, CLI).
"""

__version__ = "0.1.0"
