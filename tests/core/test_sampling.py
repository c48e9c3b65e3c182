"""Sampling: the nucleus, top-k, the draw's distribution and its seed, through both decoding paths and the CLI."""

import pytest
import torch

from conftest import make_model, make_tokenizer, random_ids
from spon.errors import SponError
from spon.pipeline import generate_text
from spon.serving.greedy import greedy_generate
from spon.serving.sampling import Sampling, nucleus_mask, sample_token


def test_nucleus_keeps_the_most_likely_until_their_mass_reaches_top_p():
    p = torch.tensor([0.15, 0.5, 0.05, 0.3])
    assert nucleus_mask(p, 0.5).tolist() == [False, True, False, False]  # 0.5 reached by the first alone
    assert nucleus_mask(p, 0.7).tolist() == [False, True, False, True]
    assert nucleus_mask(p, 0.81).tolist() == [True, True, False, True]
    assert nucleus_mask(p, 1e-9).tolist() == [False, True, False, False]  # never empty


def test_top_k_one_or_a_tiny_nucleus_is_greedy_at_any_temperature():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(300, generator=g)
        best = int(logits.argmax())
        assert sample_token(logits, temperature=5.0, top_k=1, generator=g) == best
        assert sample_token(logits, temperature=5.0, top_p=1e-6, generator=g) == best


def test_draws_follow_the_tempered_softmax_restricted_to_top_k():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0])
    g = torch.Generator().manual_seed(1)
    n = 6000
    counts = torch.bincount(torch.tensor([sample_token(logits, temperature=2.0, top_k=3, generator=g) for _ in range(n)]),
                            minlength=5)
    want = torch.softmax(logits[:3] / 2.0, 0)
    assert counts[3:].sum() == 0  # outside the top 3: never
    # each frequency within 4 standard deviations of its expectation
    assert ((counts[:3] / n - want).abs() <= 4 * (want * (1 - want) / n).sqrt()).all(), (counts, want)


def test_same_seed_same_tokens_other_seed_other_tokens():
    model = make_model("llama")
    model.generation_config.eos_token_id = None
    ids = random_ids(1, 5, seed=2)
    hot = dict(temperature=3.0)  # a tiny random model's logits are nearly flat: draws differ between seeds
    a = greedy_generate(model, ids, 12, pick=Sampling(**hot, seed=7).picker())
    assert a == greedy_generate(model, ids, 12, pick=Sampling(**hot, seed=7).picker())
    assert a != greedy_generate(model, ids, 12, pick=Sampling(**hot, seed=8).picker())
    assert Sampling().picker() is None  # temperature 0: greedy
    real = model.forward  # a forward that goes through `generate`: the same draws
    model.forward = lambda input_ids=None, **kw: real(input_ids=input_ids, **kw)
    assert greedy_generate(model, ids, 12, pick=Sampling(**hot, seed=7).picker()) == a


@pytest.mark.parametrize("kw, needle", [
    (dict(temperature=-0.5), "--temperature"), (dict(temperature=float("nan")), "--temperature"),
    (dict(top_p=0.0), "--top-p"), (dict(top_p=1.5), "--top-p"), (dict(top_k=-1), "--top-k"),
])
def test_bad_sampling_settings_are_refused(kw, needle):
    with pytest.raises(SponError, match=needle):
        Sampling(**kw)


CHAT = "{% for m in messages %}<bos> {{ m['content'] }} <eos>{% endfor %}{% if add_generation_prompt %} w9{% endif %}"


def test_chat_sends_the_prompt_through_the_template():
    model, tok = make_model("llama"), make_tokenizer()
    model.generation_config.eos_token_id = None
    with pytest.raises(SponError, match="no chat template"):
        generate_text(model, tok, "w1 w2", 4, chat=True)
    tok.chat_template = CHAT
    templated = tok("<bos> w1 w2 <eos> w9", return_tensors="pt")["input_ids"]
    want = tok.decode(greedy_generate(model, templated, 4), skip_special_tokens=True)
    assert generate_text(model, tok, "w1 w2", 4, chat=True) == want
    assert generate_text(model, tok, "w1 w2", 4) != want  # without --chat: the bare prompt, another continuation
