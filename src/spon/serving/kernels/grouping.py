"""A graph pass for compiled decode steps: the `spon.sparse_gemv` calls that read the same input (a block's q, k and v
projections; its gate and up projections) become one `spon.sparse_gemv_multi` call, so the group pays one operator
call, one thread fork and one barrier instead of one each. Found in the traced graph, not in per-architecture code:
any model whose projections share an input gets it.

Each layer keeps its own weights, threshold and bias. On separate matrices it gets exactly what its own call gives
(the kernel sums each layer's rows in the same order); on the side-by-side layout `decode.prepare_decode_` gives
siblings (each input's weights for the whole group one row), the kernel reads one row per input any of them keeps,
each layer's coefficient zero where its own threshold drops the input: the same sums up to float32 rounding. Registered
as inductor's post-grad custom pass by `decode.compile_decode_` (on by default, `group_projections=False` turns it
off): on separate matrices it saved calls and thread forks but no resolved time on a whole SmolLM2 step; with the
side-by-side rows 1.02-1.12x (docs/RESULTS.md, decode speed, has the figures).
"""

from __future__ import annotations

import operator
from collections import defaultdict
from pathlib import Path

import torch

try:
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    SUPPORTED = True
except ImportError:  # before torch 2.6 inductor takes no custom pass as a compile option: the calls stay one per layer
    CustomGraphPass, get_hash_for_files, SUPPORTED = object, None, False

__all__ = ["MAX_GROUP", "SUPPORTED", "GroupSparseGemvs", "group_sparse_gemvs"]

MAX_GROUP = 8  # SPON_MAX_GROUP in spon_plan.h: the most layers one call takes


def group_sparse_gemvs(graph: torch.fx.Graph) -> int:
    """Replace, in place, each set of two or more `spon.sparse_gemv` calls on the same input node by one
    `spon.sparse_gemv_multi` call; the number of calls that went away."""
    single, multi = torch.ops.spon.sparse_gemv.default, torch.ops.spon.sparse_gemv_multi.default
    groups: dict[torch.fx.Node, list[torch.fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_function" and node.target is single and not node.kwargs:
            groups[node.args[0]].append(node)
    removed = 0
    for x, calls in groups.items():
        for start in range(0, len(calls), MAX_GROUP):
            chunk = calls[start:start + MAX_GROUP]
            if len(chunk) < 2:
                continue
            with graph.inserting_before(chunk[0]):
                fused = graph.call_function(multi, (x, [c.args[1] for c in chunk], [c.args[2] for c in chunk],
                                                    [c.args[3] for c in chunk]))
                fused.meta["val"] = [c.meta.get("val") for c in chunk]
                for i, c in enumerate(chunk):
                    part = graph.call_function(operator.getitem, (fused, i))
                    part.meta.update(c.meta)
                    c.replace_all_uses_with(part)
            for c in chunk:
                graph.erase_node(c)
            removed += len(chunk) - 1
    if removed:
        # the later layers' weight views may sit after the first call: order the graph by its dependencies again
        from torch._inductor.pattern_matcher import stable_topological_sort

        stable_topological_sort(graph)
        graph.lint()
    return removed


class GroupSparseGemvs(CustomGraphPass):
    """`group_sparse_gemvs` as inductor's `post_grad_custom_post_pass`; its uuid (this file's hash) keys inductor's
    on-disk cache, so graphs compiled with another version of the pass are not reused."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        group_sparse_gemvs(graph)

    def uuid(self) -> bytes:
        return get_hash_for_files((str(Path(__file__)),))
