"""Does laying a layer's weight rows out by how often each input is kept make the sparse GEMV faster?

Usage: python scripts/row_order.py MODEL DTYPE ARTIFACT OUT.json [rounds]

The kernel reads one contiguous weight row per kept input. In the natural order a token's kept rows are scattered
(about half of them, at random places); ordered by each input's keep frequency (measured on calibration tokens) the
often-kept rows sit together and a token's kept rows form fewer, longer runs, which the prefetchers stream. The same
bytes are read either way; this measures the time. For every layer kind (q, o, gate, down: the inputs q/k/v and
gate/up share), all layers of the model in each layout (so weights come from memory, as in decoding), the inputs
the sparse+SPON model feeds them on held-out tokens, the two layouts alternated round by round.
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from spon.io.data import load_eval_text, tokenize
from spon.pipeline import open_model
from spon.serving.kernels import op  # noqa: F401  (registers torch.ops.spon)
from spon.sparsity.sparsify import sparse_modules

KINDS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")


def runs(mask: torch.Tensor) -> float:
    """Mean count of maximal runs of consecutive kept rows per token (mask [T, in])."""
    m = mask.int()
    starts = m[:, :1].sum(1) + (m[:, 1:] > m[:, :-1]).sum(1)
    return float(starts.float().mean())


def main(model: str, dtype: str, artifact: str, out: str, rounds: int = 7) -> None:
    torch.set_num_threads(2)
    lm, _ = open_model(model, dtype, artifact)
    mods = sparse_modules(lm.model)
    text, _ = load_eval_text("pydoc", "calibration")
    ids = tokenize(lm.tokenizer, text)
    calib, held = ids[:512].unsqueeze(0), ids[4096:4096 + 64].unsqueeze(0)
    seen: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        def pre(mod, args):
            seen.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).clone())
        return pre

    wanted = {n: m for n, m in mods.items() if n.endswith(KINDS)}
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in wanted.items()]
    with torch.no_grad():
        lm.model(calib)
        lm.model(held)
    for h in handles:
        h.remove()

    result = {"model": model, "dtype": dtype, "artifact": artifact, "rounds": rounds, "kinds": {}}
    for kind in KINDS:
        layers = []
        for n, m in wanted.items():
            if not n.endswith(kind):
                continue
            cal, hx = seen[n]
            tau = m.threshold.detach()
            q = (cal.float().abs() > tau.float()).float().mean(0)
            perm = torch.argsort(q, descending=True, stable=True)
            w = m.matrix.detach()  # [out, in]
            wt = w.t().contiguous()  # [in, out], input-major, as the kernel reads
            bias = m.bias.detach() if getattr(m, "bias", None) is not None else None
            layers.append((wt, wt[perm].contiguous(), bias, tau, hx.to(wt.dtype), hx[:, perm].contiguous().to(wt.dtype),
                           (hx.float().abs() > tau.float()), perm))
        # same sums either way, up to float32 rounding
        wt, wp, b, tau, x, xp, _, _ = layers[0]
        y0 = torch.ops.spon.sparse_gemv(x[:1], wt, b, tau)
        y1 = torch.ops.spon.sparse_gemv(xp[:1], wp, b, tau)
        err = float((y0.float() - y1.float()).abs().max())

        def sweep(permuted: bool) -> float:
            t0 = time.perf_counter()
            for t in range(x.shape[0]):
                for wt, wp, b, tau, x_, xp_, _, _ in layers:
                    if permuted:
                        torch.ops.spon.sparse_gemv(xp_[t:t + 1], wp, b, tau)
                    else:
                        torch.ops.spon.sparse_gemv(x_[t:t + 1], wt, b, tau)
            return (time.perf_counter() - t0) / (x.shape[0] * len(layers)) * 1e6

        sweep(False), sweep(True)  # plans and first touch
        nat, per = [], []
        for _ in range(rounds):
            nat.append(sweep(False))
            per.append(sweep(True))
        masks = [l[6] for l in layers]
        kept = float(torch.stack([mk.float().mean() for mk in masks]).mean())
        nat_runs = statistics.mean(runs(l[6]) for l in layers)
        freq_runs = statistics.mean(runs(l[6][:, l[7]]) for l in layers)
        row = {
            "layers": len(layers), "shape_in_out": list(layers[0][0].shape), "kept": kept,
            "us_per_call_natural": statistics.median(nat), "us_per_call_by_frequency": statistics.median(per),
            "ratio_natural_over_by_frequency": statistics.median(a / b for a, b in zip(nat, per)),
            "per_round_natural": nat, "per_round_by_frequency": per, "max_abs_diff_first_call": err,
            "runs_per_token_natural": nat_runs, "runs_per_token_by_frequency": freq_runs,
        }
        result["kinds"][kind] = row
        print(kind, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if not k.startswith("per_round")},
              flush=True)
    Path(out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], *(int(a) for a in sys.argv[5:]))
