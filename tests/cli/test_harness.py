"""The stock lm-evaluation-harness, offline, on a local multiple-choice task, through `spon eval --tasks`."""

import json

import pytest
import torch

from conftest import random_text
from spon.cli.main import main

pytestmark = pytest.mark.slow

lm_eval = pytest.importorskip("lm_eval")

N_ITEMS = 24


@pytest.fixture
def local_task(tmp_path):
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(N_ITEMS):
        q = " ".join(f"w{int(v)}" for v in torch.randint(0, 90, (6,), generator=g))
        choices = [f"w{int(v)}" for v in torch.randint(0, 90, (4,), generator=g)]
        items.append({"question": q, "choices": choices, "answer": i % 4})
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "items.jsonl").write_text("\n".join(json.dumps(x) for x in items))
    (folder / "spon_local_mc.yaml").write_text(
        "task: spon_local_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    return folder, items


def own_accuracy(model, tokenizer, items):
    """Accuracy by scoring each choice's log-likelihood after the question, as the harness defines it."""
    correct = 0
    with torch.no_grad():
        for item in items:
            q = tokenizer(item["question"], add_special_tokens=False)["input_ids"]
            scores = []
            for c in item["choices"]:
                ids = q + tokenizer(" " + c, add_special_tokens=False)["input_ids"]
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                scores.append(sum(float(logp[p - 1, ids[p]]) for p in range(len(q), len(ids))))
            correct += int(max(range(len(scores)), key=scores.__getitem__) == item["answer"])
    return correct / len(items)


@pytest.mark.parametrize("sparsity", [0.0, 0.8])
def test_harness_scores_each_variant_of_the_in_memory_model(capsys, model_folder, local_task, tmp_path, monkeypatch, sparsity):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, items = local_task
    text = tmp_path / "t.txt"
    text.write_text(random_text(6000))
    art = tmp_path / "art"
    assert main(["calibrate", "--model", str(model_folder), "--data", str(text), "--out", str(art), "--quiet",
                 "--calib-tokens", "1024", "--sparsity", str(sparsity)]) == 0
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(model_folder), "--artifact", str(art), "--tasks", "spon_local_mc",
                 "--include-path", str(folder), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "eval.json").read_text())["tasks"]
    acc = {v: res[v]["results"]["spon_local_mc"]["acc,none"] for v in ("dense", "sparse")}

    import spon
    from spon.pipeline import open_model

    lm, _ = open_model(str(model_folder), artifact=str(art))
    with spon.dense(lm.model):
        want_dense = own_accuracy(lm.model, lm.tokenizer, items)
        dense_logits = lm.model(input_ids=torch.arange(3, 40)[None]).logits
    want_sparse = own_accuracy(lm.model, lm.tokenizer, items)
    sparse_logits = lm.model(input_ids=torch.arange(3, 40)[None]).logits
    assert acc["dense"] == pytest.approx(want_dense) and acc["sparse"] == pytest.approx(want_sparse)
    outputs_differ = not torch.equal(dense_logits, sparse_logits)
    assert outputs_differ == (sparsity > 0)
    if not outputs_differ:
        assert acc["dense"] == acc["sparse"]


def test_unknown_task_is_a_clear_error(capsys, model_folder, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(random_text(6000))
    art = tmp_path / "art"
    assert main(["calibrate", "--model", str(model_folder), "--data", str(text), "--out", str(art), "--quiet", "--calib-tokens", "512"]) == 0
    capsys.readouterr()
    code = main(["eval", "--model", str(model_folder), "--artifact", str(art), "--tasks", "no_such_task_xyz"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown task(s) no_such_task_xyz" in err and "Traceback" not in err
