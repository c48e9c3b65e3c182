"""Peak memory of threshold calibration against the number of calibration tokens (issue: streaming calibration).

Each token count runs in a fresh process: load the model, then sample the process's resident memory every
5 ms while `calibrate_model` runs; the figure is the peak during calibration minus the resident memory just
before it. Text: pydoc + stdlib calibration splits together (about 180k SmolLM2 tokens).
Usage: python scripts/calibration_memory.py [--model smollm2] [--tokens 10000,100000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def one(model: str, tokens: int, text: str) -> dict:
    import spon
    from spon import pipeline
    from spon.io.data import load_splits

    lm = spon.load_model(model)
    splits = load_splits(text)
    base, peak, stop = rss_bytes(), [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    t0 = time.time()
    info = pipeline.calibrate_model(lm, splits, spon.SparsityConfig(), calib_tokens=tokens, progress=False)
    stop.set()
    t.join()
    return {"tokens_requested": tokens, "tokens": info["tokens"], "seconds": round(time.time() - t0, 1),
            "rss_before_mib": round(base / 2**20, 1), "peak_increase_mib": round((peak[0] - base) / 2**20, 1),
            "layers": len(spon.sparse_modules(lm.model))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--tokens", default="10000,100000")
    p.add_argument("--out", default=None)
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--text", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one is not None:
        print(json.dumps(one(a.model, a.one, a.text)))
        return
    from spon.io.data import load_splits

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(load_splits("pydoc").calibration + "\n\n" + load_splits("stdlib").calibration)
        rows = []
        for n in [int(x) for x in a.tokens.split(",")]:
            out = subprocess.run([sys.executable, __file__, "--model", a.model, "--one", str(n), "--text", str(text)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    from spon.sparsity.calibrate import SAMPLES_PER_LAYER

    result = {"model": a.model, "samples_per_layer": SAMPLES_PER_LAYER,
              "bound_mib": round(8 * SAMPLES_PER_LAYER * rows[0]["layers"] / 2**20, 1), "rows": rows}
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
