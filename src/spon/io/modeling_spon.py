"""The sparse model of a folder `spon export` wrote, through transformers' own entry point.

This file is copied as is into every exported folder, and its `config.json` names it (`auto_map`), so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

gives the sparse model (thresholds and folded SPON biases in place), not the dense one: with spon installed
through spon's own modules and kernels, without it through the plain-torch masked linear below (the `magnitude` and
`wina` threshold rules; the others need spon). The folder's `config.json` says `"model_type": "spon"` and keeps the
base model's config whole under `base_config`, so a loader without trust_remote_code stops with an error instead of
silently building the dense base model. `save_pretrained` (and so `push_to_hub`) writes such a folder again.

It needs only torch and transformers: it must not import spon at module level.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

MODEL_TYPE = "spon"
CONFIG_FILE = "spon_config.json"  # the artifact's two files, as spon.io.artifact names them
TENSORS_FILE = "spon_vectors.safetensors"
AUTO_MAP = {"AutoConfig": "modeling_spon.SponConfig", "AutoModelForCausalLM": "modeling_spon.SponForCausalLM"}
PLAIN_RULES = ("magnitude", "wina")  # what the plain-torch path computes; CATS and R-Sparse need spon's modules


def wrap_config(base: dict) -> dict:
    """The exported folder's config.json from the base model's: the base kept whole, the loader named."""
    return {"model_type": MODEL_TYPE, "architectures": ["SponForCausalLM"], "auto_map": dict(AUTO_MAP),
            "base_config": base, "transformers_version": base.get("transformers_version")}


def wrap_folder(folder: str | Path) -> None:
    """Make a saved model folder an exported one: its config.json wrapped (`wrap_config`) and this file beside it."""
    folder = Path(folder)
    cfg = folder / "config.json"
    cfg.write_text(json.dumps(wrap_config(json.loads(cfg.read_text())), indent=2) + "\n")
    if Path(__file__).resolve() != (folder / "modeling_spon.py").resolve():
        shutil.copyfile(__file__, folder / "modeling_spon.py")


def is_wrapped(config: dict) -> bool:
    return config.get("model_type") == MODEL_TYPE and isinstance(config.get("base_config"), dict)


def base_config(wrapped: dict, folder: str, **hub_kwargs) -> PretrainedConfig:
    """The base model's config object from a wrapped config.json's dict (a model with its own code: through that code,
    which needs trust_remote_code like the base model itself)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    base = dict(wrapped["base_config"])
    own = (base.get("auto_map") or {}).get("AutoConfig")
    if own is not None:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        if not hub_kwargs.get("trust_remote_code"):
            raise ValueError(f"{folder}: the base model comes with its own code ({own}); read it, then pass "
                             "trust_remote_code=True")
        keep = {k: v for k, v in hub_kwargs.items() if k in ("cache_dir", "revision", "token", "local_files_only")}
        cls = get_class_from_dynamic_module(own, folder, **keep)
    else:
        cls = CONFIG_MAPPING[base["model_type"]]
    return cls.from_dict(base)


class SponConfig(PretrainedConfig):
    """The exported folder's config: the base model's config under `base_config`."""

    model_type = MODEL_TYPE

    def __init__(self, base_config: dict | None = None, **kwargs):
        self.base_config = base_config or {}
        super().__init__(**kwargs)


class SparseInputLinear(nn.Module):
    """The plain-torch sparse linear: y = W (x * (score(x) > tau)) + b_sparse on the sparsified tokens, W x + b on the
    others. Weight and bias keep their names (the state dict is the base model's); the rest are non-persistent."""

    def __init__(self, linear: nn.Module, threshold: float, sparse_bias: torch.Tensor | None, *, scale=None,
                 tokens: str = "all", last_fraction: float = 0.5):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.transposed = type(linear).__name__ == "Conv1D"  # GPT-2 stores [in, out]
        self.tokens, self.last_fraction = tokens, last_fraction
        self.register_buffer("threshold", torch.tensor(float(threshold)), persistent=False)
        self.register_buffer("sparse_bias", sparse_bias, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    def _linear(self, x, bias):
        return F.linear(x, self.weight.t() if self.transposed else self.weight, bias)

    def _sparse(self, x):
        score = x.abs() if self.scale is None else x.abs() * self.scale.to(x.dtype)
        b = self.sparse_bias if self.sparse_bias is not None else self.bias
        return self._linear(x * (score > self.threshold).to(x.dtype), None if b is None else b.to(x.dtype))

    def forward(self, x):
        T = x.shape[-2] if x.dim() >= 2 else 1
        if self.tokens == "all" or T == 1:
            return self._sparse(x)
        start = T if self.tokens == "decode" else int(round(T * (1.0 - self.last_fraction)))
        if start >= T:
            return self._linear(x, self.bias)
        return torch.cat([self._linear(x[..., :start, :], self.bias), self._sparse(x[..., start:, :])], dim=-2)


def _plain_sparsify(model: nn.Module, meta: dict, tensors: dict) -> None:
    """Swap each linear the artifact names for `SparseInputLinear` (spon is not installed)."""
    cfg = meta.get("sparsity", {})
    rule = cfg.get("rule", "magnitude")
    fix = "; install spon (pip install spon) to run it"
    if rule not in PLAIN_RULES or cfg.get("selection", "threshold") != "threshold":
        raise ImportError(f"this model uses the {rule} rule with {cfg.get('selection')} selection, which needs spon's own "
                          f"modules{fix}")
    if any(k.endswith(".act_threshold") for k in tensors):
        raise ImportError(f"this model thresholds MLP activations (CATS){fix}")
    named = dict(model.named_modules())
    for name in meta["modules"]:
        lin = named.get(name)
        if lin is None or getattr(lin, "weight", None) is None:
            raise ImportError(f"this model's sparse layer {name} is not a plain linear layer here (fused experts?){fix}")
        w = lin.weight.t() if type(lin).__name__ == "Conv1D" else lin.weight
        bias = tensors.get(f"{name}.folded_bias")
        alpha = tensors.get(f"{name}.alpha")
        if bias is None and alpha is not None and bool(alpha.any()):  # not folded: fold here, b + W alpha
            bias = w.float() @ alpha.to(w.device).float() + (0 if lin.bias is None else lin.bias.float())
        if tensors.get(f"{name}.neurons") is not None:
            raise ImportError(f"this model carries spontaneous-neuron ablation weights that are not folded{fix}")
        scale = w.float().norm(dim=0) if rule == "wina" else None
        new = SparseInputLinear(lin, float(tensors[f"{name}.threshold"][0]),
                                None if bias is None else bias.to(w.device, w.dtype), scale=scale,
                                tokens=cfg.get("tokens", "all"), last_fraction=cfg.get("last_fraction", 0.5))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)


class SavesSparse:
    """Mixed into the loaded model's class: `save_pretrained` writes an exported folder again (the base weights, the
    wrapped config, this file and the artifact) rather than a dense model."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        if kwargs.get("state_dict") is None:  # the base model's tensors only (spon's modules add their constants)
            kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if k in self._spon_base_keys}
        super().save_pretrained(save_directory, *args, **kwargs)
        wrap_folder(save_directory)
        for name, data in self._spon_files.items():
            (Path(save_directory) / name).write_bytes(data)


_CLASSES: dict[type, type] = {}


def _saves_sparse(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Spon{cls.__name__}", (SavesSparse, cls), {"__module__": __name__})
    return _CLASSES[cls]


class SponForCausalLM(PreTrainedModel):
    """Loads the base model of an exported folder and makes it sparse; `from_pretrained` returns the base model's own
    class (so everything built on it works), with its sparse layers swapped in."""

    config_class = SponConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        from transformers import AutoModelForCausalLM
        from transformers.utils import cached_file

        path = str(pretrained_model_name_or_path)
        for private in ("_from_auto", "adapter_kwargs", "code_revision"):
            kwargs.pop(private, None)
        hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
        if not isinstance(config, SponConfig):
            config = SponConfig.from_pretrained(path, **hub)
        base = base_config(config.to_dict(), path, trust_remote_code=kwargs.get("trust_remote_code"), **hub)
        model = AutoModelForCausalLM.from_pretrained(path, *model_args, config=base, **kwargs)
        files = {name: Path(cached_file(path, name, **hub)) for name in (CONFIG_FILE, TENSORS_FILE)}
        model._spon_base_keys = set(model.state_dict())
        model._spon_files = {name: p.read_bytes() for name, p in files.items()}
        try:
            from spon.io.artifact import load_artifact
        except ImportError:
            from safetensors.torch import load_file

            _plain_sparsify(model, json.loads(model._spon_files[CONFIG_FILE]), load_file(str(files[TENSORS_FILE])))
        else:
            load_artifact(model, files[CONFIG_FILE].parent)
        model.__class__ = _saves_sparse(type(model))
        return model

