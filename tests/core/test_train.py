import pytest
import torch

import spon
from conftest import calibrated, make_model, random_ids
from spon.training.train import Teacher, lr_at, validation_scores


def streams():
    return random_ids(1, 64 * 16, seed=5).flatten(), random_ids(1, 64 * 4, seed=6).flatten()


def narrow(n: int, seed: int) -> torch.Tensor:
    """A stream over 8 token ids: a "domain" narrow enough that a constant correction learnt on it carries over."""
    return torch.randint(3, 11, (n,), generator=torch.Generator().manual_seed(seed))


def test_short_training_lowers_held_out_validation_kl(arch):
    model, _ = calibrated(arch, 0.6)
    cfg = spon.TrainConfig(lr=1e-3, steps=12, batch_size=4, seq_len=64, eval_every=4, warmup=2)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not n.endswith("alpha")}
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}  # weights yes; thresholds, folded biases no
    result = spon.train_spon_(model, narrow(64 * 16, seed=5), narrow(64 * 4, seed=6), cfg, progress=False)
    assert result.kept == "trained" and result.val_kl_best < 0.9 * result.val_kl_start
    assert any(float(m.alpha.abs().sum()) > 0 for m in spon.sparse_modules(model).values())
    for n, p in model.named_parameters():  # every model weight stayed frozen
        if n in weights:
            assert torch.equal(p, weights[n]), n
    assert not any(m.alpha.requires_grad for m in spon.sparse_modules(model).values())
    assert all(p.requires_grad == trainable[n] for n, p in model.named_parameters() if n in weights)  # as they were before
    assert any(trainable.values()) and not all(trainable.values())


def test_lr_schedule_warms_up_and_decays():
    cfg = spon.TrainConfig(lr=1.0, steps=20, warmup=4)
    assert lr_at(1, cfg) == pytest.approx(0.25) and lr_at(4, cfg) == pytest.approx(1.0)
    assert lr_at(20, cfg) == pytest.approx(0.1) and lr_at(12, cfg) < lr_at(5, cfg)


def test_too_little_text_is_a_clear_error():
    model, _ = calibrated("llama")
    with pytest.raises(spon.SponError, match="too little text"):
        spon.train_spon_(model, torch.arange(10), torch.arange(10), spon.TrainConfig(seq_len=64), progress=False)


def test_topk_kl_matches_exact_kl_when_teacher_mass_is_in_the_top_k():
    from spon.training.kl import kl_per_token, kl_topk, topk_teacher

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 50, generator=g) * 4
    student = teacher + torch.randn(2, 5, 50, generator=g)
    exact = kl_per_token(torch.log_softmax(teacher, -1), student)
    assert float(kl_topk(*topk_teacher(teacher, 50), student)) == pytest.approx(float(exact), rel=1e-4)
    approx = float(kl_topk(*topk_teacher(teacher, 10), student))
    assert 0 < approx <= float(exact) + 1e-6  # coarse-graining never raises KL


def test_zero_vectors_are_kept_when_training_only_hurts():
    model, _ = calibrated("llama", 0.6)
    train_ids, _ = streams()
    cfg = spon.TrainConfig(lr=50.0, steps=3, batch_size=4, seq_len=64, eval_every=1, warmup=0)  # absurd lr
    result = spon.train_spon_(model, train_ids, train_ids[:256], cfg, progress=False)
    assert result.kept == "zeros" and result.best_step == 0
    assert all(float(m.alpha.abs().sum()) == 0 for m in spon.sparse_modules(model).values())


def test_non_finite_loss_stops_and_keeps_the_last_good_vectors(monkeypatch):
    import spon.training.train as train_mod

    model, _ = calibrated("llama", 0.6)
    train_ids, _ = streams()
    real_kl, calls = train_mod.Teacher.kl, []

    def flaky(self, rows, logits):  # training losses turn NaN from the 4th step on
        out = real_kl(self, rows, logits)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) >= 4:
                return out * float("nan")
        return out

    monkeypatch.setattr(train_mod.Teacher, "kl", flaky)
    cfg = spon.TrainConfig(lr=1e-3, steps=10, batch_size=4, seq_len=64, eval_every=1, warmup=0)
    result = spon.train_spon_(model, train_ids, train_ids[:256], cfg, progress=False)
    assert result.steps_run == 3 and "non-finite loss at step 4" in result.stopped
    assert result.kept == "trained" and result.best_step <= 3
    assert all(torch.isfinite(m.alpha).all() for m in spon.sparse_modules(model).values())


def test_exact_teacher_mode_trains_too():
    model, _ = calibrated("qwen2", 0.6)
    train_ids, _ = streams()
    cfg = spon.TrainConfig(lr=1e-3, steps=8, batch_size=4, seq_len=64, eval_every=4, warmup=2, teacher_topk=0)
    result = spon.train_spon_(model, train_ids, train_ids[:256], cfg, progress=False)
    assert result.kept == "trained" and result.val_kl_best < 0.9 * result.val_kl_start


def test_the_result_counts_the_distinct_training_sequences_drawn():
    model, _ = calibrated("llama", 0.6)
    train_ids, val_ids = streams()  # 1024 tokens: 16 sequences of 64
    few = spon.TrainConfig(steps=2, batch_size=2, seq_len=64, eval_every=2, warmup=1, train_sequences=5)
    assert spon.train_spon_(model, train_ids, val_ids, few, progress=False).train_sequences == 5
    many = spon.TrainConfig(steps=2, batch_size=2, seq_len=64, eval_every=2, warmup=1, train_sequences=100)
    assert spon.train_spon_(model, train_ids, val_ids, many, progress=False).train_sequences == 16  # all the text has


def test_mean_dropped_is_the_mean_of_what_sparsity_removes():
    from spon.training.alphas import mean_dropped

    x = torch.tensor([[[0.1, 2.0, -0.2], [-0.3, 0.05, 3.0]]])  # [1, 2, 3]
    total, n = mean_dropped(x, torch.tensor(0.25))
    assert n == 2 and torch.allclose(total / n, torch.tensor([0.05, 0.025, -0.1]))


def test_init_alphas_sets_the_mean_dropped_input():
    from spon.training.alphas import init_alphas_

    model, _ = calibrated("llama", 0.6)
    ids = random_ids(2, 32, seed=3)
    seen = {}
    q = model.model.layers[0].self_attn.q_proj
    h = q.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    init_alphas_(model, [ids], progress=False)
    h.remove()
    x = seen["x"]
    expected = (x * (x.abs() <= q.threshold)).reshape(-1, x.shape[-1]).mean(0)
    torch.testing.assert_close(q.alpha, expected)
    assert all(m.alpha.abs().sum() > 0 for m in spon.sparse_modules(model).values())


def test_mean_dropped_start_is_kept_only_if_it_beats_zeros():
    model, _ = calibrated("llama", 0.6)
    train_ids, _ = streams()
    cfg = spon.TrainConfig(lr=50.0, steps=2, batch_size=4, seq_len=64, eval_every=1, warmup=0, init="mean-dropped")
    result = spon.train_spon_(model, train_ids, train_ids[:256], cfg, progress=False)
    assert result.kept in ("start", "zeros") and result.best_step == 0
    nonzero = any(float(m.alpha.abs().sum()) > 0 for m in spon.sparse_modules(model).values())
    assert nonzero == (result.kept == "start")
    with pytest.raises(spon.SponError, match="unknown init"):
        spon.TrainConfig(init="random")


def test_topk_kl_keeps_precision_and_gradient_when_the_top_k_holds_almost_all_mass():
    from spon.training.kl import kl_topk, topk_teacher

    vocab, k = 200, 4
    teacher = torch.full((1, 1, vocab), -30.0)
    teacher[..., :k] = torch.tensor([10.0, 9.0, 8.0, 7.0])  # the rest holds ~e-40 of the mass: 1 - sum(top) is 0 in float32
    student = torch.full((1, 1, vocab), -28.0)  # the student puts e^2 times the teacher's mass outside the top k
    student[..., :k] = torch.tensor([7.0, 8.0, 9.0, 10.0])
    values, indices, log_rest = topk_teacher(teacher, k)
    assert torch.isfinite(log_rest).all() and float(log_rest) < -35  # the true log-mass, not log(1e-12) = -27.6

    def kl(s_logits, exact):  # KL over the k + 1 outcomes; exact: float64, written out directly
        if not exact:
            return kl_topk(values, indices, log_rest, s_logits)
        t, s = teacher.double().log_softmax(-1), s_logits.log_softmax(-1)
        rest_t, rest_s = t[..., k:].logsumexp(-1), s[..., k:].logsumexp(-1)
        return ((t[..., :k].exp() * (t[..., :k] - s[..., :k])).sum() + rest_t.exp() * (rest_t - rest_s)).sum()

    got, want = student.clone().requires_grad_(True), student.double().requires_grad_(True)
    kl(got, False).backward()
    kl(want, True).backward()
    assert float(kl(student, False)) == pytest.approx(float(kl(student.double(), True)), rel=1e-5)
    # outside the top k the gradient is s_j - t_j, tiny but real: the rest term must carry it (a clamp zeroes it)
    torch.testing.assert_close(got.grad[..., k:].double(), want.grad[..., k:], rtol=1e-3, atol=0)


def test_training_a_folded_model_is_refused():
    model, _ = calibrated("llama")
    spon.fold_(model)
    train_ids, val_ids = streams()
    with pytest.raises(spon.SponError, match="already folded"):
        spon.train_spon_(model, train_ids, val_ids, spon.TrainConfig(steps=1, seq_len=64), progress=False)


def test_library_errors_name_config_fields_not_cli_flags():
    model, _ = calibrated("llama")
    with pytest.raises(spon.SponError) as e:
        spon.train_spon_(model, torch.arange(10), torch.arange(10), spon.TrainConfig(seq_len=64), progress=False)
    assert "seq_len" in str(e.value) and "--" not in str(e.value)


def test_calibration_progress_bar_knows_its_total(capsys):
    model = make_model("llama")
    cfg = spon.SparsityConfig(sparsity=0.5)
    spon.sparsify_(model, cfg)
    spon.calibrate_(model, [random_ids(2, 32, seed=s) for s in range(3)], cfg, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_training_sequences_are_a_seeded_draw_of_distinct_whole_sequences():
    from spon.training.train import init_sequences, training_sequences

    ids = torch.arange(64 * 10)  # ten 64-token sequences, each recognisable by its first token
    cfg = spon.TrainConfig(seq_len=64, train_sequences=6, batch_size=2, seed=1)
    a, b = training_sequences(ids, cfg), training_sequences(ids, cfg)
    assert torch.equal(a, b) and a.shape == (6, 64)
    assert len(set(a[:, 0].tolist())) == 6 and all(int(r[0]) % 64 == 0 for r in a)  # whole, distinct sequences
    assert not torch.equal(a, training_sequences(ids, spon.TrainConfig(seq_len=64, train_sequences=6, seed=2)))
    batches = init_sequences(a, cfg)  # 8192 tokens would be 128 sequences: all six, in batches of two
    assert [len(x) for x in batches] == [2, 2, 2] and torch.equal(torch.cat(batches), a)


@pytest.mark.parametrize("lr_scale", ["none", "threshold"])
def test_threshold_lr_scale_moves_each_vector_in_proportion_to_its_threshold(lr_scale):
    model, _ = calibrated("llama", 0.5)
    mods = list(spon.sparse_modules(model).values())
    with torch.no_grad():
        for i, m in enumerate(mods):
            m.threshold.fill_(0.05 * 2 ** (i % 5))  # 0.05 ... 0.8; the median is 0.2
    train_ids, val_ids = streams()
    cfg = spon.TrainConfig(lr=1e-2, steps=1, batch_size=2, seq_len=64, warmup=1, lr_scale=lr_scale)
    moved = {}
    spon.train_spon_(model, train_ids, val_ids, cfg, progress=False,
                     on_step=lambda step: moved.update({id(m): float(m.alpha.abs().max()) for m in mods}))
    median = sorted(float(m.threshold) for m in mods)[len(mods) // 2]
    # Adam's first step moves an entry by its rate times g / (|g| + 1e-8): the full rate where the gradient is not tiny
    want = {id(m): 1e-2 * (float(m.threshold) / median if lr_scale == "threshold" else 1.0) for m in mods}
    assert all(moved[k] <= want[k] * (1 + 1e-4) for k in want)
    full = [k for k in want if moved[k] >= want[k] * (1 - 1e-3)]
    assert len(full) >= len(mods) // 3 and len({round(want[k], 6) for k in full}) >= (3 if lr_scale == "threshold" else 1)


def test_unknown_lr_scale_is_a_clear_error():
    with pytest.raises(spon.SponError, match="unknown lr_scale 'tau'"):
        spon.TrainConfig(lr_scale="tau")


def test_validation_nll_is_the_models_next_token_loss():
    model = make_model("llama")
    seqs = random_ids(3, 32, seed=9)
    teacher = Teacher(model, seqs, 8, 2)
    with torch.no_grad():
        expected = sum(float(model(input_ids=seqs[i:i + 1], labels=seqs[i:i + 1]).loss) for i in range(3)) / 3
    assert validation_scores(model, teacher, 2)["nll"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("select", ["kl", "nll"])
def test_the_kept_step_is_the_best_by_the_selected_validation_score(select):
    model, _ = calibrated("llama", 0.6)
    cfg = spon.TrainConfig(lr=3e-3, steps=12, batch_size=4, seq_len=64, eval_every=2, warmup=2, select=select)
    result = spon.train_spon_(model, narrow(64 * 16, seed=5), narrow(64 * 4, seed=6), cfg, progress=False)
    scored = [h for h in result.history if "val_kl" in h]
    assert len(scored) == 7 and all("val_nll" in h for h in scored)
    best = min(scored, key=lambda h: h[f"val_{select}"])
    assert min(scored, key=lambda h: h["val_kl"])["step"] != min(scored, key=lambda h: h["val_nll"])["step"]  # so a choice is tested
    assert result.select == select and result.best_step == best["step"]
    assert (result.val_kl_best, result.val_nll_best) == (best["val_kl"], best["val_nll"])  # both scores of the kept step


def test_unknown_select_is_a_clear_error():
    with pytest.raises(spon.SponError, match="unknown select 'ppl'; use one of kl, nll"):
        spon.TrainConfig(select="ppl")


def test_averaging_validates_and_keeps_the_moving_average_of_the_steps():
    model, _ = calibrated("llama", 0.6)
    mods = spon.sparse_modules(model)
    iterates: list[dict] = []  # the optimiser's vectors after each step (on_step runs after validation put them back)
    cfg = spon.TrainConfig(lr=3e-3, steps=8, batch_size=4, seq_len=64, eval_every=1, warmup=2, average=0.5)
    result = spon.train_spon_(model, narrow(64 * 16, seed=5), narrow(64 * 4, seed=6), cfg, progress=False,
                              on_step=lambda step: iterates.append({n: m.alpha.detach().clone() for n, m in mods.items()}))
    assert result.kept == "trained" and len(iterates) == 8
    ema = dict(iterates[0])
    for it in iterates[1: result.best_step]:
        ema = {n: 0.5 * ema[n] + 0.5 * it[n] for n in ema}
    for n, m in mods.items():
        torch.testing.assert_close(m.alpha, ema[n])
    assert result.best_step > 1 and any(not torch.allclose(m.alpha, iterates[result.best_step - 1][n]) for n, m in mods.items())


def test_averaging_resumes_to_the_uninterrupted_vectors(tmp_path):
    cfg = spon.TrainConfig(lr=3e-3, steps=6, batch_size=4, seq_len=64, eval_every=3, warmup=2, average=0.7)
    ids, val = narrow(64 * 16, seed=5), narrow(64 * 4, seed=6)
    model, _ = calibrated("llama", 0.6)
    spon.train_spon_(model, ids, val, cfg, progress=False)
    whole = {n: m.alpha.detach().clone() for n, m in spon.sparse_modules(model).items()}

    def stop(step):
        if step == 3:
            raise RuntimeError("stop")

    model, _ = calibrated("llama", 0.6)
    with pytest.raises(RuntimeError, match="stop"):
        spon.train_spon_(model, ids, val, cfg, progress=False, checkpoint=tmp_path / "c.pt", checkpoint_every=3, on_step=stop)
    model, _ = calibrated("llama", 0.6)
    spon.train_spon_(model, ids, val, cfg, progress=False, checkpoint=tmp_path / "c.pt", checkpoint_every=3, resume=True)
    assert any(bool(v.any()) for v in whole.values())
    for n, m in spon.sparse_modules(model).items():
        assert torch.equal(m.alpha, whole[n]), n


def test_average_out_of_range_is_a_clear_error():
    with pytest.raises(spon.SponError, match=r"average must be in \[0, 1\)"):
        spon.TrainConfig(average=1.0)


def test_threshold_jitter_trains_other_vectors_and_leaves_the_thresholds_as_calibrated():
    ids, val = narrow(64 * 16, seed=5), narrow(64 * 4, seed=6)
    runs = {}
    for jitter in (0.0, 0.2, 0.2):
        model, _ = calibrated("llama", 0.6)
        taus = {n: m.threshold.detach().clone() for n, m in spon.sparse_modules(model).items()}
        cfg = spon.TrainConfig(lr=3e-3, steps=6, batch_size=4, seq_len=64, eval_every=2, warmup=2, threshold_jitter=jitter)
        result = spon.train_spon_(model, ids, val, cfg, progress=False)
        assert result.kept == "trained"
        assert all(torch.equal(m.threshold, taus[n]) for n, m in spon.sparse_modules(model).items())
        runs.setdefault(jitter, []).append({n: m.alpha.detach().clone() for n, m in spon.sparse_modules(model).items()})
    plain, (a, b) = runs[0.0][0], runs[0.2]
    assert all(torch.equal(a[n], b[n]) for n in a)  # the jitter is drawn from seeded generators: reproducible
    assert any(not torch.allclose(a[n], plain[n]) for n in a)  # and it changes what is learnt


def test_negative_threshold_jitter_is_a_clear_error():
    with pytest.raises(spon.SponError, match="threshold_jitter must be 0"):
        spon.TrainConfig(threshold_jitter=-0.1)
