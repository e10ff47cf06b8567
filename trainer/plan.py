"""`primeflow plan --config F [--set k=v ...] [--gpus N] [--gpu-gb 80] [--budget-gb 72]`: the per-GPU
memory of a run by component and the peak of each stage of a PRIME step, without building any model.

Exit status: 0 when every stage fits the budget, 1 when one does not (each such stage is named with its
largest component and the config key that shrinks it), 2 for a bad config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import ConfigError, load_config
from .planning import MemoryPlan, advice, model_shapes, plan_memory
from .planning.budget import GB


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="primeflow plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="YAML run config (default: the embedded tiny default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs of the job (default tp x pp, i.e. DP = 1)")
    ap.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU in GB (1e9 bytes)")
    ap.add_argument("--budget-gb", type=float, default=None, help="peak allowed per GPU (default 90%% of it)")
    ap.add_argument("--model-config", default=None, help="an HF config.json to take the shapes from")
    return ap


def render(plan: MemoryPlan, source: str) -> str:
    lay, mb, act = plan.layout, plan.micro_batch, plan.train_activations
    out = [f"model: {source}: {plan.model.num_layers} layers, hidden {plan.model.hidden_size}, "
           f"vocab {plan.model.vocab_size}",
           f"layout: {lay.gpus} GPUs = TP {lay.tp} x PP {lay.pp} x DP {lay.dp}; micro-batch {mb.tokens} tokens "
           f"({mb.sequences} x {mb.longest})",
           f"activations per micro-batch: saved {act.saved / GB:.2f} GB ({act.per_layer.total / mb.tokens / 1024:.0f}"
           f" KiB/token/layer without recompute), forward+backward peak {act.train_peak / GB:.2f} GB, "
           f"no-grad forward {plan.ref_activations.forward_peak / GB:.2f} GB",
           f"vLLM: weights {plan.vllm_weights / GB:.1f} GB, KV cache {plan.vllm_kv_cache / GB:.1f} GB "
           f"({plan.kv_tokens} tokens)", ""]
    out.append(f"{'per GPU (GB)':<44}" + "".join(f"{s.name:>17}" for s in plan.stages))
    names = list(dict.fromkeys(c.name for s in plan.stages for c in s.components))
    for name in names:
        cells = []
        for s in plan.stages:
            value = sum(c.bytes for c in s.components if c.name == name)
            cells.append(f"{value / GB:17.1f}" if any(c.name == name for c in s.components) else f"{'-':>17}")
        out.append(f"{name:<44}" + "".join(cells))
    out.append(f"{'peak':<44}" + "".join(f"{s.peak / GB:17.1f}" for s in plan.stages))
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    out.append(f"\npeak {plan.peak / GB:.1f} GB of a {plan.budget_bytes / GB:.0f} GB budget "
               f"({plan.gpu_bytes / GB:.0f} GB GPU): {verdict}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        config = load_config(args.config, args.overrides)
        shapes = model_shapes(config, args.model_config)
        budget = args.budget_gb if args.budget_gb is not None else 0.9 * args.gpu_gb
        plan = plan_memory(config, shapes.model, gpus=args.gpus, gpu_gb=args.gpu_gb, budget_gb=budget)
    except ConfigError as error:
        print(f"primeflow plan: {error}", file=sys.stderr)
        return 2
    print(render(plan, shapes.source))
    problems = advice(plan, config)
    for line in problems:
        print(f"  - {line}")
    return 0 if plan.fits and not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
