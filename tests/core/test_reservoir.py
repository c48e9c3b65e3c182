import torch

from spon.sparsity.reservoir import Reservoir


def _stream(n_batches=6, size=1000):
    return [torch.arange(i * size, (i + 1) * size, dtype=torch.float32) for i in range(n_batches)]


def _fill(res, batches, indices):
    gen = torch.Generator()
    for i in indices:
        gen.manual_seed(100 + i)
        res.add(batches[i], gen)
    return res


def test_keeps_everything_below_capacity():
    res = _fill(Reservoir(10_000), _stream(), range(6))
    assert torch.equal(res.values.sort().values, torch.arange(6000, dtype=torch.float32))


def test_capacity_is_a_bound_and_the_sample_is_without_replacement_and_uniform():
    res = _fill(Reservoir(1500), _stream(n_batches=20), range(20))  # 20k values seen
    assert res.values.numel() == 1500 and res.seen == 20_000
    assert res.values.unique().numel() == 1500
    # a uniform sample of 0..19999: mean 9999.5, standard error ~ 5774/sqrt(1500) ~ 149
    assert abs(float(res.values.mean()) - 9999.5) < 600
    counts = torch.histc(res.values, bins=4, min=0, max=20000)  # every quarter of the stream is represented
    assert counts.min() > 250


def test_merging_parts_equals_the_whole_stream():
    batches = _stream(n_batches=8)
    whole = _fill(Reservoir(900), batches, range(8))
    even, odd = _fill(Reservoir(900), batches, range(0, 8, 2)), _fill(Reservoir(900), batches, range(1, 8, 2))
    even.merge(odd)
    assert torch.equal(even.values.sort().values, whole.values.sort().values)
    assert even.seen == whole.seen
