import copy, statistics, sys, time, torch
from spon.bench.decode import generate_decode, _nothing_dropped
from spon.decode import compile_decode_, prepare_decode_
from spon.jobs import open_model
from spon.sparsify import without_spon
dtype = sys.argv[1] if len(sys.argv) > 1 else "float32"
lm, _ = open_model("smollm2", dtype, "/tmp/art50")
prepare_decode_(lm.model)
dense, _ = open_model("smollm2", dtype, None)
A = lm.model; B = copy.deepcopy(A); D = dense.model
for m in (A, B, D): compile_decode_(m)
prompt = lm.tokenizer("In Python, a list comprehension", return_tensors="pt")["input_ids"]
N = 64
t0 = time.perf_counter(); generate_decode(A, prompt, N); print("compile A", time.perf_counter() - t0, flush=True)
t0 = time.perf_counter()
with _nothing_dropped(B): generate_decode(B, prompt, N)
with without_spon(B): generate_decode(B, prompt, N)
generate_decode(B, prompt, N); print("compile B x3", time.perf_counter() - t0, flush=True)
t0 = time.perf_counter(); generate_decode(D, prompt, N); print("compile D", time.perf_counter() - t0, flush=True)
variants = {"A_alone": (A, False), "B_after_variants": (B, False), "A_skipguard": (A, True), "B_skipguard": (B, True),
            "D_dense": (D, False), "D_skipguard": (D, True)}
rates = {k: [] for k in variants}
toks = {}
for r in range(7):
    items = list(variants.items()); items = items if r % 2 == 0 else items[::-1]
    for name, (m, skip) in items:
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=skip):
            t, _, dt = generate_decode(m, prompt, N)
        toks.setdefault(name, t)
        if r: rates[name].append((N - 1) / dt)
    print(r, {k: round(v[-1], 1) for k, v in rates.items() if v}, flush=True)
med = {k: statistics.median(v) for k, v in rates.items()}
print({k: round(v, 1) for k, v in med.items()})
for a, b in [("A_skipguard", "A_alone"), ("B_skipguard", "B_after_variants"), ("A_alone", "B_after_variants"), ("D_skipguard", "D_dense"), ("A_skipguard", "D_dense"), ("A_alone", "D_dense")]:
    rs = [x / y for x, y in zip(rates[a], rates[b])]
    print(a, "/", b, round(statistics.median(rs), 3), round(min(rs), 3), round(max(rs), 3))
print("same tokens", {k: toks[k] == toks["A_alone"] for k in toks})
