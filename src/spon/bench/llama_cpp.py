"""llama.cpp as a decode baseline: the dense engine CPU users run, on exactly the weights spon serves.

For a model that comes from a GGUF file (the embedded models, or `--model FILE.gguf`) the file is requantised
once per precision with llama.cpp's own quantiser (`llama_model_quantize`, requantising allowed, every tensor
the same type) into the cache: F32 holds exactly the weights spon dequantises, BF16 and F16 the same weights
rounded as `load_model(..., "bfloat16")` rounds them. Other models need a GGUF of their weights (`--llama-gguf`).

Needs the optional package `llama-cpp-python` (it builds llama.cpp from source: ~8 min on 2 cores); without it
the benchmark's row says so.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import torch

from spon.io.atomic import atomic_file
from spon.errors import SponError
from spon.io.models import cache_dir, gguf_source

__all__ = ["LLAMA_CPP_INSTALL", "FTYPES", "requantised_gguf", "LlamaCpp", "open_llama_cpp", "LlamaBench",
           "open_llama_bench", "quantized_with_binary"]

LLAMA_CPP_INSTALL = "pip install llama-cpp-python (builds llama.cpp from source, ~8 min on 2 cores)"
FTYPES = {"float32": ("F32", 0), "float16": ("F16", 1), "bfloat16": ("BF16", 32),  # llama_ftype values
          "q8_0": ("Q8_0", 7), "q4_0": ("Q4_0", 2), "q4_1": ("Q4_1", 3), "q5_0": ("Q5_0", 8)}


def _requantised(gguf: Path, tag: str, write) -> Path:
    """`gguf` with every tensor in type `tag`, made once per file and type into the cache: write(tmp) makes it, and it
    appears whole (atomically) or not at all."""
    target = cache_dir() / "llama-cpp" / f"{gguf.stem}-{gguf.stat().st_size}-{tag}.gguf"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as tmp:
            write(tmp)
    return target


def requantised_gguf(gguf: Path, dtype: str, llama_cpp) -> Path:
    """`gguf` with every tensor in `dtype` (F32/BF16/F16, or a block type), by llama.cpp's quantiser through the binding."""
    tag, ftype = FTYPES[dtype]

    def write(tmp: Path) -> None:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.pure = ftype, True, True
        with _quiet_fds():
            rc = llama_cpp.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise SponError(f"llama.cpp could not requantise {gguf} to {tag} (code {rc}); give --llama-gguf FILE")

    return _requantised(gguf, tag, write)


@contextlib.contextmanager
def _quiet_fds():
    """llama.cpp's C code logs every tensor to the process's stdout/stderr: send both to /dev/null for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


class LlamaCpp:
    """A loaded llama.cpp model that decodes like `greedy_decode`: greedy, batch 1, prompt given as token ids."""

    def __init__(self, llama_cpp, gguf: Path, threads: int):
        self.gguf, self.threads = gguf, threads
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=512,
                                   verbose=False)

    def close(self) -> None:
        """Free the model now (llama-cpp-python's own finaliser fails at interpreter exit)."""
        self.llm.close()

    def decode(self, prompt: torch.Tensor, new_tokens: int) -> tuple[list[int], float, float]:
        """(tokens, prefill seconds, decode seconds); decode time covers the new_tokens - 1 steps after the first token."""
        ids = [int(t) for t in prompt.reshape(-1)]
        tokens, times = [], []
        t0 = time.perf_counter()
        for tok in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter())
            tokens.append(int(tok))
            if len(tokens) == new_tokens:
                break
        return tokens, times[0] - t0, times[-1] - times[0]


class LlamaBench:
    """llama.cpp's own `llama-bench` binary as the baseline row (for builds where the Python binding is missing or
    broken): each round runs `llama-bench -p 0 -n N -t T -r 1` on the file and takes its decode rate, so the time is
    llama.cpp's generation of N tokens from an empty context (no prompt; its tokens are not reported)."""

    def __init__(self, binary: str | Path, gguf: Path, threads: int):
        self.binary, self.gguf, self.threads = Path(binary), gguf, threads

    def close(self) -> None:
        pass

    def decode(self, prompt: torch.Tensor, new_tokens: int) -> tuple[list[int], float, float]:
        import json
        import subprocess

        proc = subprocess.run([str(self.binary), "-m", str(self.gguf), "-p", "0", "-n", str(new_tokens), "-t",
                               str(self.threads), "-r", "1", "-o", "json"], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SponError(f"llama-bench failed on {self.gguf}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        rate = float(json.loads(proc.stdout)[0]["avg_ts"])
        return [], 0.0, (new_tokens - 1) / rate


def quantized_with_binary(binary: Path, gguf: Path, qtype: str) -> Path:
    """`gguf` requantised to `qtype` (every tensor, --pure) by the `llama-quantize` beside `binary`, once, into the cache."""
    import subprocess

    tag = FTYPES[qtype][0]

    def write(tmp: Path) -> None:
        proc = subprocess.run([str(binary.with_name("llama-quantize")), "--allow-requantize", "--pure", str(gguf), str(tmp),
                               tag], capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise SponError(f"llama-quantize could not make {tag} from {gguf}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")

    return _requantised(gguf, tag, write)


def open_llama_bench(binary: str, model: str, weights: str, gguf: str | None = None,
                     threads: int | None = None) -> LlamaBench | str:
    """`LlamaBench` on the model's own file ("gguf"), a requantised copy (a block type), or `gguf`; or why not."""
    binary = Path(binary)
    if not binary.is_file():
        return f"no llama-bench at {binary}"
    if gguf is None:
        src = gguf_source(model)
        if src is None:
            return "no GGUF of these weights (the model is not a GGUF file): give --llama-gguf FILE"
        gguf = src if weights == "gguf" else quantized_with_binary(binary, src, weights)
    return LlamaBench(binary, Path(gguf), threads or torch.get_num_threads())


def open_llama_cpp(model: str, dtype: str, gguf: str | None = None, threads: int | None = None) -> LlamaCpp | str:
    """llama.cpp on the same weights at `dtype` (a float type, a GGUF block type such as "q8_0", or "gguf": the model's
    own file as it is), or a line saying why there is none."""
    try:
        import llama_cpp
    except ImportError:
        return f"not installed: {LLAMA_CPP_INSTALL}"
    if gguf is None:
        src = gguf_source(model)
        if src is None:
            return "no GGUF of these weights (the model is not a GGUF file): give --llama-gguf FILE"
        if dtype == "gguf":  # the file as it is: its own quantized types
            gguf = src
        elif dtype not in FTYPES:
            return f"llama.cpp has no {dtype} type"
        else:
            gguf = requantised_gguf(src, dtype, llama_cpp)
    return LlamaCpp(llama_cpp, Path(gguf), threads or torch.get_num_threads())
