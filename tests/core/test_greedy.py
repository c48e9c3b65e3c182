"""greedy_generate: one forward per token over its own KV cache, the same tokens as Hugging Face's greedy generate."""

import contextlib
import inspect

import pytest
import torch

import spon
from conftest import calibrated, make_model, random_ids, with_random_alphas
from spon.serving.greedy import greedy_generate, greedy_token


def _hf_greedy(model, ids, n, **kw):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0, **kw)
    return out[0, ids.shape[1]:].tolist()


def _hf_logits(model, ids, n):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0, output_logits=True,
                             return_dict_in_generate=True)
    return torch.cat(out.logits)


def _recording(model) -> list:
    """Wrap the model's forward (keeping its signature) to record each call's last-position logits."""
    real, seen = model.forward, []

    def forward(*a, **kw):
        out = real(*a, **kw)
        seen.append(out.logits[:, -1].float())
        return out

    forward.__signature__ = inspect.signature(real)
    model.forward = forward
    return seen


def test_same_tokens_and_logits_as_generate_on_every_architecture(arch):
    model, _ = calibrated(arch)
    with_random_alphas(model)
    ids = random_ids(1, 5, seed=2)
    model.generation_config.eos_token_id = None
    for ctx in (contextlib.nullcontext, lambda: spon.dense(model)):
        with ctx():
            want_tokens, want_logits = _hf_greedy(model, ids, 9), _hf_logits(model, ids, 9)
            seen = _recording(model)
            assert greedy_generate(model, ids, 9) == want_tokens
            del model.forward  # the class's own forward again
        # the logits of every step, so a wrong position shows even where a tiny model repeats one token
        torch.testing.assert_close(torch.cat(seen), want_logits, atol=1e-5, rtol=1e-5)


def test_static_cache_is_used_when_the_model_asks_for_it():
    model = make_model("llama")
    model.generation_config.eos_token_id = None
    ids = random_ids(1, 4, seed=3)
    want = _hf_greedy(model, ids, 6)
    model.generation_config.cache_implementation = "static"  # what compile_decode_ sets
    seen = []
    real = model.forward

    def spy(*a, **kw):
        seen.append(type(kw.get("cache", kw.get("past_key_values"))).__name__)
        return real(*a, **kw)

    spy.__signature__ = inspect.signature(real)
    model.forward = spy
    assert greedy_generate(model, ids, 6) == want
    assert seen == ["StaticCache"] * 6  # built before the prompt's forward and kept, never a fresh dynamic cache


def test_stops_at_end_of_text_and_reports_each_token():
    model = make_model("llama")
    model.generation_config.eos_token_id = None
    ids = random_ids(1, 5, seed=2)
    free = greedy_generate(model, ids, 8)
    stop = free[3]
    first = free.index(stop)
    got = []
    assert greedy_generate(model, ids, 8, eos_token_id=stop, on_token=got.append) == free[: first + 1]
    assert got == free[: first + 1]
    model.generation_config.eos_token_id = [stop]  # the model's own end-of-text ids by default
    assert greedy_generate(model, ids, 8) == free[: first + 1]
    assert greedy_generate(model, ids, 8, eos_token_id=None) == free  # None: never stop early


def test_a_forward_without_cache_positions_goes_through_generate():
    model = make_model("llama")
    model.generation_config.eos_token_id = None
    ids = random_ids(1, 5, seed=2)
    want = greedy_generate(model, ids, 5)
    real = model.forward
    model.forward = lambda input_ids=None, **kw: real(input_ids=input_ids, **kw)  # no cache_position in its signature
    got = []
    assert greedy_generate(model, ids, 5, on_token=got.append) == want == got


def test_more_than_one_sequence_or_a_model_that_cannot_decode_is_refused():
    with pytest.raises(spon.SponError, match=r"\[1, T\]"):
        greedy_generate(make_model("llama"), random_ids(2, 5), 3)
    with pytest.raises(spon.SponError, match="Hugging Face causal LM"):
        greedy_generate(torch.nn.Linear(4, 4), random_ids(1, 5), 3)


def test_static_cache_in_either_transformers_versions_form(monkeypatch):
    import transformers

    from spon.serving.greedy import _static_cache

    made = []

    class Old:  # transformers 4: batch, device and dtype up front
        def __init__(self, config, max_batch_size=None, max_cache_len=None, device=None, dtype=torch.float32):
            made.append(("old", max_batch_size, max_cache_len, device, dtype))

    class New:  # transformers 5: allocated on first use
        def __init__(self, config, max_cache_len, offloading=False):
            made.append(("new", max_cache_len))

    model = make_model("llama")
    for cls in (Old, New):
        monkeypatch.setattr(transformers, "StaticCache", cls)
        _static_cache(model, 12, torch.bfloat16, torch.device("cpu"))
    assert made == [("old", 1, 12, torch.device("cpu"), torch.bfloat16), ("new", 12)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [10, 4095, 4096, 5000, 49152, 151937])
def test_greedy_token_is_argmax_first_index_ties_and_nans_included(dtype, size):

    gen = torch.Generator().manual_seed(size)
    cases = [torch.randn(size, generator=gen)]
    ties = torch.randn(size, generator=gen)
    ties[size // 2] = ties[size - 1] = 50.0  # the first of two maxima in different runs
    cases.append(ties)
    cases.append(torch.ones(size))  # every entry the maximum: index 0
    nans = torch.randn(size, generator=gen)
    nans[size // 3] = nans[size - 1] = float("nan")  # argmax: the first NaN
    cases.append(nans)
    cases.append(torch.full((size,), float("-inf")))
    last = torch.randn(size, generator=gen)
    last[-1] = float("inf")  # in the tail past the last whole run
    cases.append(last)
    for v in cases:
        v = v.to(dtype)
        assert greedy_token(v) == int(v.argmax())
        assert greedy_token(v[None]) == int(v.argmax())
