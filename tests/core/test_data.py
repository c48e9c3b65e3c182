import sys
import types

import pytest

import spon
from spon.io.data import assign_blocks, split_documents


def test_pydoc_splits_are_deterministic_disjoint_and_sized():
    a, b = spon.load_splits("pydoc"), spon.load_splits("pydoc")
    assert (a.calibration, a.validation, a.evaluation) == (b.calibration, b.validation, b.evaluation)
    from pydoc_data.topics import topics

    blocks = assign_blocks(dict(topics))
    keys = [k for k, _, _ in blocks]
    assert len(keys) == len(set(keys)) > 200  # each block lands in exactly one part
    assert a.evaluation == "\n\n".join(b for _, part, b in blocks if part == 2)
    sizes = [len(t) for t in (a.calibration, a.validation, a.evaluation)]
    assert sizes[0] > 5 * sizes[2] and sizes[2] > 20_000 and sizes[1] > 20_000


def test_split_keeps_every_block_once():
    docs = {f"d{i}": "\n\n".join(f"para {i}.{j} " * 30 for j in range(20)) for i in range(10)}
    parts = split_documents(docs)
    joined = [p for part in parts for p in part.split("\n\n") if p]
    assert sorted(joined) == sorted(p.strip() for d in docs.values() for p in d.split("\n\n"))
    assert all(parts)


def test_local_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(f"alpha {i} " * 50 for i in range(60)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("\n\n".join(f"beta {i} " * 50 for i in range(60)))
    one = spon.load_splits(str(tmp_path / "a.txt"))
    both = spon.load_splits(str(tmp_path))
    assert "alpha" in one.calibration and "beta" not in one.calibration
    assert "beta" in both.calibration + both.validation + both.evaluation
    assert one.source["name"] == str(tmp_path / "a.txt")


def test_missing_text_and_empty_folder(tmp_path):
    with pytest.raises(spon.SponError, match="not a file, a folder"):
        spon.load_splits(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(spon.SponError, match="no text found"):
        spon.load_splits(str(tmp_path / "empty"))


def test_hub_dataset_without_datasets_names_offline_alternatives(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(spon.SponError, match="embedded text 'pydoc'"):
        spon.load_splits("wikitext2")


def test_wikitext2_uses_standard_splits(monkeypatch):
    calls = []

    def load_dataset(name, config=None, **kw):
        calls.append((name, config))
        return {s: {"text": [f"{s} line"]} for s in ("train", "validation", "test")}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    s = spon.load_splits("wikitext2")
    assert calls == [("wikitext", "wikitext-2-raw-v1")]
    assert (s.calibration, s.validation, s.evaluation) == ("train line", "validation line", "test line")


def test_unreachable_hub_dataset_is_one_clear_error(monkeypatch):
    def load_dataset(*a, **kw):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(spon.SponError, match="cannot load dataset 'c4'.*'pydoc'"):
        spon.load_splits("c4")


def test_sequences_with_and_without_bos():
    import torch

    from spon.io.data import sequences

    ids = torch.arange(10, 30)
    assert sequences(ids, 8).tolist() == [list(range(10, 18)), list(range(18, 26))]
    with_bos = sequences(ids, 8, bos=1)
    assert with_bos.tolist() == [[1, *range(10, 17)], [1, *range(17, 24)]]  # 20 tokens: two rows of 1 + 7
    assert sequences(ids, 8, max_tokens=9).shape == (1, 8)


def test_a_mixture_interleaves_each_split_of_its_parts_in_proportion():
    pydoc, stdlib, both = spon.load_splits("pydoc"), spon.load_splits("stdlib"), spon.load_splits("pydoc+stdlib")
    for part in ("calibration", "validation", "evaluation"):
        mixed, a, b = getattr(both, part), getattr(pydoc, part), getattr(stdlib, part)
        assert sorted(mixed.split("\n\n")) == sorted((a + "\n\n" + b).split("\n\n"))  # every paragraph, once
        share = len(b) / (len(a) + len(b))
        for frac in (0.05, 0.2, 0.5):  # any prefix (what calibration and validation read) holds both in proportion
            prefix = mixed[: int(frac * len(mixed))]
            in_b = sum(len(p) for p in prefix.split("\n\n") if p in b)
            assert abs(in_b / len(prefix) - share) < 0.1, (part, frac, in_b / len(prefix), share)
    assert both.source["name"] == "pydoc+stdlib" and "interleaved with" in both.source["description"]
    text, source = spon.io.data.load_eval_text("pydoc+stdlib")
    assert text == both.evaluation and source["split"] == "evaluation"  # named corpora: their held-out parts
