"""Greedy batch-1 decoding with nothing around the forward: one model call per token.

Hugging Face's `generate` runs Python around every forward (input preparation, logits processors, stopping criteria,
bookkeeping), which is a visible share of a small model's compiled step of a few milliseconds; this loop calls the same
compiled forward with nothing around it (the A/B is in docs/RESULTS.md). `greedy_generate` keeps the KV cache itself: a static one for a model `compile_decode_`
compiled (so its graphs are reused from step to step), the model's own dynamic one otherwise. It needs a forward that
takes a cache and positions (Hugging Face causal LMs do, under either version's names); any other model goes through
`generate`, with the same tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from spon.errors import SponError
from spon.sparsity.sparsify import set_attr

__all__ = ["greedy_generate", "greedy_token", "cache_argument", "cache_of"]

CHUNK = 1024  # greedy_token's first pass: the maximum of each run of this many logits


def _forward_params(model: nn.Module) -> set[str]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return set()
    return set(params)


def cache_argument(model: nn.Module) -> str | None:
    """The keyword the forward takes its KV cache by: `cache` (transformers 5), `past_key_values` (4), or None."""
    params = _forward_params(model)
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def cache_of(out):
    """The KV cache a forward returned, under either transformers version's name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def greedy_token(logits: torch.Tensor) -> int:
    """The index of the largest of a vocabulary's logits (1-D, or [1, V]): the first one, as `argmax` gives it (a NaN
    counts as the largest, as there).

    On the CPU torch's argmax walks a vocabulary one element at a time, while its max reduction is vectorised, so over a
    vocabulary of 50k-260k logits argmax costs ten times as much (docs/RESULTS.md has the timings). So on the
    CPU it finds the maximum of each run of CHUNK logits, then the first run holding the largest, then the first
    index of that run's maximum: the same index in three small reductions. Elsewhere (a GPU) it is argmax.
    """
    v = logits.reshape(-1)
    n = v.numel() // CHUNK
    if v.device.type != "cpu" or n < 4:
        return int(v.argmax())
    maxima = v[:n * CHUNK].view(n, CHUNK).amax(-1)
    if v.numel() > n * CHUNK:
        maxima = torch.cat([maxima, v[n * CHUNK:].amax(-1, keepdim=True)])
    k = int(maxima.argmax()) * CHUNK
    return k + int(v[k:k + CHUNK].argmax())


def _eos_ids(model: nn.Module, eos_token_id) -> set[int]:
    if eos_token_id is ...:
        gc = getattr(model, "generation_config", None)
        eos_token_id = getattr(gc, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    return {int(e) for e in (eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])}


def _static_cache(model: nn.Module, length: int, dtype: torch.dtype, device: torch.device):
    """A static KV cache for one sequence of `length` tokens, in whichever form this transformers version builds it."""
    from transformers import StaticCache

    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    if "dtype" in inspect.signature(StaticCache.__init__).parameters:  # transformers 4: size, device and dtype up front
        return StaticCache(config=config, max_batch_size=1, max_cache_len=length, device=device, dtype=dtype)
    return StaticCache(config=config, max_cache_len=length)  # transformers 5: allocated on first use


@torch.no_grad()
def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *, eos_token_id=...,
                    on_token: Callable[[int], None] | None = None,
                    pick: Callable[[torch.Tensor], int] | None = None) -> list[int]:
    """The greedy continuation of `input_ids` [1, T]: up to `max_new_tokens` token ids, ending at (and including) the
    first end-of-text id (`eos_token_id`: default the model's generation config; None: never stop early).

    on_token(token) is called as each token is known (after its forward and argmax), e.g. to time the steps.
    pick: the next token from the last position's logits instead of the largest (`sampling.Sampling.picker`).
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise SponError(f"greedy_generate decodes one sequence: input_ids must be [1, T], got {list(input_ids.shape)}")
    weight = next(model.parameters())
    input_ids = input_ids.to(weight.device)
    eos = _eos_ids(model, eos_token_id)
    params = _forward_params(model)
    cache_kw = cache_argument(model)
    positions, cache_positions = "position_ids" in params, "cache_position" in params
    if cache_kw is None or not (positions or cache_positions):
        return _through_generate(model, input_ids, max_new_tokens, eos, on_token, pick)
    n_prompt = input_ids.shape[1]
    cache = None
    if getattr(getattr(model, "generation_config", None), "cache_implementation", None) == "static":
        cache = _static_cache(model, n_prompt + max_new_tokens, weight.dtype, weight.device)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    position = torch.arange(n_prompt, device=weight.device)
    ids, tokens = input_ids, []
    for _ in range(max_new_tokens):
        if positions:
            extra["position_ids"] = position[None]
        if cache_positions:  # transformers 4 and early 5: where the cache writes
            extra["cache_position"] = position
        out = model(input_ids=ids, use_cache=True, **{cache_kw: cache}, **extra)
        cache = cache_of(out)
        token = (pick or greedy_token)(out.logits[0, -1])
        ids = torch.tensor([[token]], device=weight.device)
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if token in eos:
            break
        position = position[-1:] + 1
    return tokens


def _through_generate(model, input_ids, max_new_tokens, eos, on_token, pick=None) -> list[int]:
    if not callable(getattr(model, "generate", None)):
        raise SponError(f"{type(model).__name__} neither takes a KV cache and positions in its forward nor has generate(); "
                        "pass a Hugging Face causal LM")
    gc = model.generation_config
    pad = gc.pad_token_id if gc.pad_token_id is not None else (min(eos) if eos else 0)
    with set_attr([gc], "eos_token_id", sorted(eos) or None):  # None must mean no early stop, not the config's
        out = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                             streamer=_Streamer(on_token) if on_token is not None else None,
                             **({"logits_processor": _picked(pick)} if pick is not None else {}))
    return [int(t) for t in out[0, input_ids.shape[1]:]]


def _picked(pick):
    """`generate`'s logits processors, made to choose what `pick` chooses: every other logit becomes -inf."""
    from transformers import LogitsProcessorList

    def only(input_ids, scores):
        out = torch.full_like(scores, float("-inf"))
        out[0, pick(scores[0])] = 0.0
        return out

    return LogitsProcessorList([only])


class _Streamer:
    """`generate`'s streamer interface: the prompt first, then one call per new token."""

    def __init__(self, on_token):
        self.on_token, self.started = on_token, False

    def put(self, value):
        if self.started:
            self.on_token(int(value.reshape(-1)[-1]))
        self.started = True

    def end(self):
        pass
