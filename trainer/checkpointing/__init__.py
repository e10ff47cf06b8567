"""Checkpoint / resume: sharded atomic checkpoints (CheckpointManager) and HF export (export_hf).

See manager.py for the on-disk layout and the atomicity argument, hf_export.py for export."""

from .hf_export import export_hf, saved_layout
from .manager import CheckpointError, CheckpointManager, current_layout, layout_change, read_manifest

__all__ = ["CheckpointError", "CheckpointManager", "current_layout", "export_hf", "layout_change", "read_manifest",
           "saved_layout"]
