"""Save and load only the delta: thresholds, spontaneous vectors (or folded biases), keyed by module name.

An artifact is a folder with `spon_config.json` (versioned, with the base model's identity and shapes,
the sparsity config, the calibration and training description, and a checksum) and
`spon_vectors.safetensors`. Loading checks that the artifact fits the model and says what differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from spon.io.atomic import atomic_file, ensure_writable_dir
from spon.config import SparsityConfig
from spon.errors import SponError
from spon.sparsity.experts import fuse_experts_, unfuse_experts_
from spon.sparsity.sparse_linear import linear_matrix, linear_shape
from spon.sparsity.sparsify import sparse_activations, sparse_modules, sparsify_, target_linears, unsparsify_

__all__ = [
    "save_artifact", "load_artifact", "read_artifact", "is_artifact", "weight_fingerprint", "FORMAT_VERSION", "CONFIG_NAME",
    "TENSORS_NAME", "FINGERPRINT_TOLERANCE",
]

FORMAT_VERSION = 1
CONFIG_NAME = "spon_config.json"
TENSORS_NAME = "spon_vectors.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


FINGERPRINT_PROBES = 16  # random projections u^T W v per module
FINGERPRINT_TOLERANCE = 4e-3  # RMS change of the projections, in units of W's RMS entry: bf16 rounding moves them ~1e-3


@torch.no_grad()
def weight_fingerprint(matrix: torch.Tensor) -> list[float]:
    """[rms, p_1 .. p_16]: W's RMS entry and 16 seeded random projections u_i^T W v_i / rms (each ~N(0, 1)).

    Stable across dtypes of the same weights (rounding averages out over the whole matrix) but moved by any
    real change of the weights: a fine-tune whose weights differ by 1% of their RMS moves each projection by ~0.01.
    """
    w = matrix.detach().float().cpu()
    out_f, in_f = w.shape
    g = torch.Generator().manual_seed(out_f * 100_003 + in_f)
    u = torch.randn(FINGERPRINT_PROBES, out_f, generator=g) / out_f**0.5
    v = torch.randn(in_f, FINGERPRINT_PROBES, generator=g) / in_f**0.5
    rms = float(w.pow(2).mean().sqrt()) or 1.0
    proj = ((u @ w) * v.t()).sum(-1) / rms
    return [rms, *proj.tolist()]


def _fingerprint_distance(saved: list[float], now: list[float]) -> float:
    """RMS difference of the projections, plus the relative change of the RMS entry."""
    diff = torch.tensor(saved[1:]) - torch.tensor(now[1:])
    return float(diff.pow(2).mean().sqrt()) + abs(saved[0] - now[0]) / max(abs(saved[0]), 1e-30)


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def save_artifact(model: nn.Module, path: str | Path, identity: dict, **info) -> Path:
    """Write the thresholds and vectors of a sparsified model to the folder `path`.

    `info` goes into the JSON as is (calibration data, training result, metrics...).
    """
    mods = sparse_modules(model)
    if not mods:
        raise SponError("the model is not sparsified; nothing to save")
    path = ensure_writable_dir(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, m in mods.items():
        tensors[f"{name}.threshold"] = m.threshold.detach().float().reshape(1).cpu()
        if m.folded:
            tensors[f"{name}.folded_bias"] = m.folded_bias.detach().cpu().contiguous()
        else:
            tensors[f"{name}.alpha"] = m.alpha.detach().float().cpu().contiguous()
            if m.neurons is not None:
                tensors[f"{name}.neurons"] = m.neurons.detach().float().cpu().contiguous()
                tensors[f"{name}.rates"] = m.rates.detach().float().cpu().contiguous()
    for name, act in sparse_activations(model).items():  # CATS
        tensors[f"{name}.act_threshold"] = act.threshold.detach().float().reshape(1).cpu()
    folded = any(m.folded for m in mods.values())
    has_alpha = any(m.has_spon for m in mods.values())
    config = getattr(model, "spon_config", None) or SparsityConfig()
    # both files appear together: tensors renamed into place first, then the config that names their checksum
    with atomic_file(path / CONFIG_NAME) as tmp_cfg, atomic_file(path / TENSORS_NAME) as tmp:
        save_file(tensors, str(tmp))
        meta = {
            "format": "spon",
            "version": FORMAT_VERSION,
            "base_model": identity,
            "modules": {name: [m.out_features, m.in_features] for name, m in mods.items()},
            "fingerprints": {name: weight_fingerprint(m.matrix) for name, m in mods.items()},
            "sparsity": config.to_dict(),
            "tokens": config.describe_tokens(),
            "folded": folded,
            "has_spon": has_alpha,
            "checksum_sha256": _sha256(tmp),
            **info,
        }
        tmp_cfg.write_text(json.dumps(meta, indent=2, default=str))
    return path


def check_artifact_path(path: str | Path) -> Path:
    """The artifact's config file, or one line saying what is wrong with `path` (cheap: checked before any model loads)."""
    path = Path(path)
    if not path.exists():
        raise SponError(f"artifact {path} not found; give the folder `spon calibrate` or `spon train` wrote")
    if not path.is_dir():
        raise SponError(f"artifact {path} is a file; give the folder `spon calibrate` or `spon train` wrote")
    if not (path / CONFIG_NAME).is_file():
        raise SponError(f"{path} is not a spon artifact (no {CONFIG_NAME}); make one with `spon calibrate` or `spon train`")
    return path / CONFIG_NAME


def read_artifact(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON and tensors of an artifact folder, after format, version and checksum checks."""
    path = Path(path)
    cfg, ten = check_artifact_path(path), path / TENSORS_NAME
    try:
        meta = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SponError(f"cannot read {cfg}: {e}; the artifact is damaged, recreate it") from None
    if meta.get("format") != "spon":
        raise SponError(f"{cfg} is not a spon artifact config")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise SponError(
            f"{path} has artifact format version {meta['version']}, newer than this spon ({FORMAT_VERSION}); upgrade spon"
        )
    if not ten.is_file():
        raise SponError(f"{path} lacks {TENSORS_NAME}; the artifact is incomplete, recreate it")
    if meta.get("checksum_sha256") and _sha256(ten) != meta["checksum_sha256"]:
        raise SponError(f"{ten} does not match the checksum in {CONFIG_NAME}; the file is corrupt, recreate the artifact")
    try:
        tensors = load_file(str(ten))
    except (SafetensorError, OSError) as e:
        raise SponError(f"cannot read {ten} ({e}); the file is corrupt, recreate the artifact") from None
    return meta, tensors


def _check_fits(meta: dict, model: nn.Module, config: SparsityConfig, path: Path, check_weights: bool = True) -> None:
    have = {n: linear_shape(m) for n, m in (sparse_modules(model) or target_linears(model, config)).items()}
    want = meta["modules"]
    base = meta.get("base_model", {})
    made_for = f"{base.get('name', '?')} ({base.get('architecture', '?')})"
    fix = f"; load the model it was made for (--model {base['name']})" if base.get("name") else ""
    for name, shape in want.items():
        if name not in have:
            raise SponError(
                f"artifact {path} does not fit this model: it was made for {made_for} and has module {name}, "
                f"which this model lacks; use the artifact made for this model{fix}"
            )
        if list(have[name]) != list(shape):
            raise SponError(
                f"artifact {path} does not fit this model: module {name} is {shape[0]}x{shape[1]} (out x in) in the "
                f"artifact (made for {made_for}) but {have[name][0]}x{have[name][1]} in this model{fix}"
            )
    extra = [n for n in have if n not in want]
    if extra:
        raise SponError(
            f"artifact {path} does not fit this model: the model has {len(extra)} sparsifiable linears the artifact "
            f"lacks (first: {extra[0]}); it was made for {made_for}{fix}"
        )
    if not check_weights:
        return
    if base.get("weights", "float") not in ("float", "gguf"):  # made on quantized values: the same --weights loads them
        fix = f"; it was made on {base['weights']} weights: load the model with --weights {base['weights']}"
    mods = sparse_modules(model) or target_linears(model, config)
    for name, saved in meta.get("fingerprints", {}).items():  # artifacts older than fingerprints are not checked
        if _fingerprint_distance(saved, weight_fingerprint(linear_matrix(mods[name]))) > FINGERPRINT_TOLERANCE:
            raise SponError(
                f"artifact {path} was made for other weights: module {name} has the same shape but different weights "
                f"than the model the artifact was saved from ({made_for}){fix or '; use that model'}, or load it with "
                "check_weights=False (CLI: --ignore-weights) if you know the thresholds and vectors carry over"
            )


@torch.no_grad()
def load_artifact(model: nn.Module, path: str | Path, *, check_weights: bool = True) -> dict:
    """Sparsify `model` as the artifact says and load its thresholds and vectors; returns the artifact's JSON.

    The artifact's own rule and token mode are applied: a model already sparsified (with any rule) is first put
    back to plain linears. check_weights: refuse an artifact saved from other weights of the same shapes (its
    thresholds and folded biases belong to those weights); False loads it anyway.
    """
    path = Path(path)
    meta, tensors = read_artifact(path)
    config = SparsityConfig.from_dict(meta["sparsity"])
    unfused = unfuse_experts_(model)  # an artifact names experts' layers as `sparsify_` makes them
    try:
        _check_fits(meta, model, config, path, check_weights)
    except SponError:
        fuse_experts_(model, list(unfused))
        raise
    unsparsify_(model)  # whatever rule state the model had, the artifact's replaces it
    mods = sparsify_(model, config)
    for name, m in mods.items():
        m.threshold.fill_(float(tensors[f"{name}.threshold"][0]))
        if f"{name}.folded_bias" in tensors:
            m.folded_bias = tensors[f"{name}.folded_bias"].to(m.weight.device, m.weight.dtype)
            m.alpha.zero_()
        else:
            m.folded_bias = None
            m.alpha.copy_(tensors[f"{name}.alpha"])
        if f"{name}.neurons" in tensors:
            m.neurons = nn.Parameter(tensors[f"{name}.neurons"].to(m.weight.device), requires_grad=False)
            m.rates = nn.Parameter(tensors[f"{name}.rates"].to(m.weight.device), requires_grad=False)
    for name, act in sparse_activations(model).items():
        if f"{name}.act_threshold" in tensors:
            act.threshold.fill_(float(tensors[f"{name}.act_threshold"][0]))
    model.spon_config = config
    return meta
