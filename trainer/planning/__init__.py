"""`primeflow plan`: per-GPU memory of a run config by component and stage (budget.py), from the model
shapes the trainer builds (shapes.py) and the per-layer activation formula of models/memory_plan.py."""

from .budget import MemoryPlan, Stage, advice, plan_memory
from .shapes import ModelShapes, model_shapes

__all__ = ["MemoryPlan", "ModelShapes", "Stage", "advice", "model_shapes", "plan_memory"]
