"""Token-budget micro-batches, balanced across data-parallel ranks.

Every forward/backward pass (old log-probs, PRM, reference, policy) runs on packed micro-batches: rows are
assigned to DP ranks so each rank gets about the same number of tokens, then each rank's rows are grouped
into micro-batches whose total tokens stay within the budget (the model packs them into one THD sequence
with cu_seqlens, so padding costs nothing). Loss scaling uses global counts (see trainer/stages/losses.py),
which makes gradients independent of how the rows were packed or sharded, up to fp32 summation order.
"""

from __future__ import annotations


def balance_across_ranks(row_ids: list[int], tokens: list[int], ranks: int) -> list[list[int]]:
    """Assign rows to `ranks` buckets, longest first onto the least-loaded bucket (deterministic: ties go
    to the lower rank, equal-length rows keep their order). Each bucket is returned in row order."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    load = [0] * ranks
    buckets: list[list[int]] = [[] for _ in range(ranks)]
    for row in sorted(row_ids, key=lambda r: (-tokens[r], r)):
        target = min(range(ranks), key=lambda k: (load[k], k))
        buckets[target].append(row)
        load[target] += tokens[row]
    return [sorted(b) for b in buckets]


def micro_batches(row_ids: list[int], tokens: list[int], budget: int) -> list[list[int]]:
    """Group rows into micro-batches of at most `budget` tokens (first-fit decreasing). A row longer than
    the budget gets a micro-batch of its own (it cannot be split)."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    bins: list[list[int]] = []
    room: list[int] = []
    for row in sorted(row_ids, key=lambda r: (-tokens[r], r)):
        for k, free in enumerate(room):
            if tokens[row] <= free:
                bins[k].append(row)
                room[k] -= tokens[row]
                break
        else:
            bins.append([row])
            room.append(budget - tokens[row])
    return [sorted(b) for b in bins]


def plan(row_ids: list[int], tokens: list[int], *, budget: int, dp_rank: int, dp: int) -> list[list[int]]:
    """This DP rank's micro-batches (lists of global row ids) for the rows `row_ids`."""
    mine = balance_across_ranks(row_ids, tokens, dp)[dp_rank]
    return micro_batches(mine, tokens, budget) if mine else []
