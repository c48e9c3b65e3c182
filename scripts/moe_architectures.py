"""Check `spon.sparsity.experts` on every transformers model type whose experts are fused (`@use_experts_implementation`):
build a tiny random model from the default config shrunk (hidden 64, 2 layers, 4 experts, top-2), and compare its
logits dense, with the experts unfused, and sparsified with nothing dropped (thresholds -1). A type whose tiny config
does not build or run dense is reported as such (a config problem, not spon's).

    .venv/bin/python scripts/moe_architectures.py [model_type ...]
"""

import re
import sys
import warnings
from pathlib import Path

import torch
import transformers as T

import spon
from spon.sparsity.experts import fuse_experts_, unfuse_experts_

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
             moe_intermediate_size=32, num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2,
             vocab_size=128, head_dim=16, max_position_embeddings=256, n_group=1, topk_group=1, first_k_dense_replace=0,
             shared_expert_intermediate_size=32, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
             v_head_dim=16, decoder_sparse_step=1, mlp_only_layers=[], moe_layer_freq=1)
EXTRA = {"flex_olmo": dict(pad_token_id=0), "qwen3_next": dict(num_hidden_layers=4), "dots1": dict(n_shared_experts=1),
         "jamba": dict(num_hidden_layers=8, pad_token_id=0),
         "lfm2_moe": dict(num_dense_layers=0, layer_types=["full_attention", "full_attention"]),
         **{t: dict(head_dim=8) for t in ("deepseek_v3", "deepseek_v32", "longcat_flash", "glm4_moe_lite", "glm_moe_dsa",
                                          "axk1", "axk2")},  # multi-head latent attention: head_dim is the rope part
         **{t: dict(pad_token_id=0) for t in ("bailing_hybrid", "hy_v4", "kimi_linear")}}


def fused_types() -> list[str]:
    models = Path(T.__file__).parent / "models"
    return sorted(p.parent.name for p in models.glob("*/modeling_*.py") if "@use_experts_implementation" in p.read_text())


def check(model_type: str) -> str:
    stage = "build"
    try:
        cfg = T.AutoConfig.for_model(model_type)
        kw = {k: v for k, v in SMALL.items() if hasattr(cfg, k)} | EXTRA.get(model_type, {})
        torch.manual_seed(0)
        model = T.AutoModelForCausalLM.from_config(type(cfg)(**kw)).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 3:
                    p.normal_(0, 0.2)
        ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(1))
        stage = "dense"
        with torch.no_grad():
            ref = model(input_ids=ids).logits
        stage = "unfused"
        n = len(unfuse_experts_(model))
        with torch.no_grad():
            unfused = model(input_ids=ids).logits
        fuse_experts_(model)
        mods = spon.sparsify_(model, spon.SparsityConfig(sparsity=0.5))
        with torch.no_grad():
            sparse = model(input_ids=ids).logits
        return (f"{type(model).__name__}: {n} experts modules unfused, max |logit diff| {float((unfused - ref).abs().max()):.1e}"
                f" unfused, {float((sparse - ref).abs().max()):.1e} sparsified at threshold -1, {len(mods)} sparse layers")
    except Exception as e:  # noqa: BLE001  a report line per type
        return f"error at {stage}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    T.logging.set_verbosity_error()
    for t in sys.argv[1:] or fused_types():
        print(f"{t}: {check(t)}", flush=True)
