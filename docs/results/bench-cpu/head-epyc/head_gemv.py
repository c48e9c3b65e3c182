import statistics, time, torch, torch.nn.functional as F
from spon.kernels.cpu import cpu_kernel
k = cpu_kernel()
torch.manual_seed(0)
for out, inn in ((49152, 576), (151936, 896)):
    n = max(2, int(1.2e9 // (out * inn * 4)))
    ws = [torch.randn(out, inn) for _ in range(n)]
    x = torch.randn(inn)
    plans = [k.prepare_dense(w, None, torch.float32) for w in ws]
    t = {"kernel": [], "F.linear": []}
    for r in range(6):
        for i in range(n):
            t0 = time.perf_counter(); y1 = plans[i](x); t["kernel"].append(time.perf_counter() - t0)
            t0 = time.perf_counter(); y2 = F.linear(x, ws[i]); t["F.linear"].append(time.perf_counter() - t0)
    torch.testing.assert_close(y1, y2, atol=1e-3, rtol=1e-3)
    print(out, inn, n, {a: round(statistics.median(v) * 1e3, 2) for a, v in t.items()}, "ms;",
          {a: round(out * inn * 4 / statistics.median(v) / 1e9, 1) for a, v in t.items()}, "GB/s", flush=True)
