"""Implicit-PRM cross-entropy loss and the PRM's pairwise accuracy metric."""

from .accuracy import prm_pairwise_accuracy
from .op import prm_ce_loss, prm_ce_loss_backend, prm_ce_terms
from .ref import prm_ce_loss as prm_ce_loss_ref

__all__ = ["prm_ce_loss", "prm_ce_loss_backend", "prm_ce_loss_ref", "prm_ce_terms", "prm_pairwise_accuracy"]
