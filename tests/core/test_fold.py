import torch

import spon
from conftest import calibrated, make_model, random_ids, with_random_alphas


def test_fold_is_exact(arch):
    model, _ = calibrated(arch)
    with_random_alphas(model)
    ids = random_ids(2, 16)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with spon.without_spon(model):
            plain = model(input_ids=ids).logits
        spon.fold_(model)
        after = model(input_ids=ids).logits
    assert not torch.allclose(before, plain, atol=1e-4)  # the alphas do change the output
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert all(float(m.alpha.abs().sum()) == 0 for m in spon.sparse_modules(model).values())


def test_fold_creates_bias_where_missing_and_keeps_dense_exact():
    model, _ = calibrated("llama")
    with_random_alphas(model)
    spon.fold_(model)
    q = model.model.layers[0].self_attn.q_proj
    assert q.bias is None and q.folded_bias is not None and q.folded_bias.shape == (q.out_features,)
    ids = random_ids(1, 8)
    with spon.dense(model):
        assert torch.equal(model(input_ids=ids).logits, make_model("llama")(input_ids=ids).logits)


def test_fold_adds_to_existing_bias():
    model, _ = calibrated("qwen2")
    with_random_alphas(model)
    q = model.model.layers[0].self_attn.q_proj
    expected = q.bias + q.weight @ q.alpha
    spon.fold_(model)
    torch.testing.assert_close(q.folded_bias, expected)
    spon.fold_(model)  # twice: alphas are zero now, nothing changes
    torch.testing.assert_close(q.folded_bias, expected)
