"""Check spon on every model type transformers' AutoModelForCausalLM knows (200 in transformers 5.25): build a tiny
random model from the type's default config shrunk (hidden 64, 2 layers, vocabulary 128), then

- sparsify at 50% with nothing dropped yet (thresholds -1): the logits must equal the dense model's;
- the share of the decoder blocks' weights left dense (`spon.dense_block_weights`: modules that are not linears);
- calibrate at 50% on random tokens: the measured sparsity on other tokens;
- one decoding step through the kernels (`prepare_decode_`) against the masked-dense step (`spon.masked_dense`); a
  model without a KV cache (an encoder as decoder) takes a one-token forward instead, also the kernels' path.

A type whose tiny config does not build, or whose dense model fails a forward or a cached single-token step, is
reported as such (a config or model problem, not spon's). A vision-language model's sub-configs are shrunk alike.
Each type runs in its own process with a time limit; one line per type, on standard output.

    .venv/bin/python scripts/causal_architectures.py [model_type ...] [--timeout S]
"""

import subprocess
import sys
import warnings

SMALL = dict(hidden_size=64, n_embd=64, d_model=64, dim=64, num_hidden_layers=2, n_layer=2, num_layers=2, n_layers=2,
             num_decoder_layers=2, decoder_layers=2, encoder_layers=2, num_attention_heads=4, n_head=4, num_heads=4,
             decoder_attention_heads=4, encoder_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
             ffn_dim=128, decoder_ffn_dim=128, encoder_ffn_dim=128, n_inner=128, d_ff=128, moe_intermediate_size=32,
             num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, vocab_size=128, head_dim=16,
             max_position_embeddings=256, n_positions=256, n_ctx=256, n_group=1, topk_group=1, first_k_dense_replace=0,
             shared_expert_intermediate_size=32, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
             qk_nope_head_dim=8, v_head_dim=16, decoder_sparse_step=1, mlp_only_layers=[], moe_layer_freq=1)
EXTRA = {"flex_olmo": dict(pad_token_id=0), "qwen3_next": dict(num_hidden_layers=4), "dots1": dict(n_shared_experts=1),
         "jamba": dict(num_hidden_layers=8, pad_token_id=0),
         "lfm2_moe": dict(num_dense_layers=0, layer_types=["full_attention", "full_attention"]),
         "gpt_neo": dict(attention_types=[[["global", "local"], 1]]), "codegen": dict(rotary_dim=4),
         "gptj": dict(rotary_dim=4), "recurrent_gemma": dict(num_hidden_layers=3),
         # hybrids: with 2 layers every layer is a linear-attention or state-space one, which the cache rejects
         "dbrx": dict(attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0), ffn_config=dict(ffn_hidden_size=32, moe_num_experts=4, moe_top_k=2)),
         "bamba": dict(attn_layer_indices=[1]), "granitemoehybrid": dict(layer_types=["mamba", "attention"]),
         **{t: dict(layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"])
            for t in ("bailing_hybrid", "kimi_linear")},
         **{t: dict(num_hidden_layers=4) for t in ("qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text",
                                                    "qwen4_exp", "qwen4_exp_text")},
         **{t: dict(head_dim=8) for t in ("deepseek_v3", "deepseek_v32", "longcat_flash", "glm4_moe_lite", "glm_moe_dsa",
                                          "axk1", "axk2")}}
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id", "cls_token_id")


def causal_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def tiny(model_type: str):
    import torch
    import transformers as T
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(shrunk(T.AutoConfig.for_model(model_type), model_type)).eval()
    with torch.no_grad():  # random init has tiny weights and zero biases; spread activations like a trained model's
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif p.dim() == 3:
                p.normal_(0, 0.2)
    return model


def shrunk(cfg, model_type: str):
    """cfg with SMALL's sizes, its sub-configs (a vision-language model's text and vision towers) shrunk alike."""
    kw = {k: v for k, v in SMALL.items() if _has(cfg, k) and not isinstance(getattr(type(cfg), k, None), property)}
    kw |= {k: min(getattr(cfg, k), 3) for k in TOKEN_IDS if _has(cfg, k) and isinstance(getattr(cfg, k), int)}
    kw |= {name: shrunk(sub, model_type) for name in getattr(cfg, "sub_configs", {})
           if _has(cfg, name) and hasattr(sub := getattr(cfg, name), "to_dict")}
    return type(cfg)(**kw | EXTRA.get(model_type, {}))


def _has(cfg, key: str) -> bool:
    try:  # a per-layer attribute of a heterogeneous config raises on global access
        return hasattr(cfg, key)
    except Exception:  # noqa: BLE001
        return False


def check(model_type: str) -> str:
    import torch
    import spon
    from spon.io.data import sequences
    stage = "build"
    try:
        model = tiny(model_type)
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(4, 128, (1, 9), generator=gen)
        prompt = torch.randint(4, 128, (1, 7), generator=gen)
        stage = "dense"
        with torch.no_grad():
            ref = model(input_ids=ids).logits
            cached = getattr(model(input_ids=prompt, use_cache=True), "past_key_values", None) is not None
        _one_step(model, prompt)  # a model whose own cached step fails is reported here, not at "decode"
        stage = "sparsify"
        cfg = spon.SparsityConfig(sparsity=0.5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mods = spon.sparsify_(model, cfg)
        notice = any(str(w.message).startswith("spon: ") for w in caught)
        dense, total = spon.dense_block_weights(model, cfg)
        with torch.no_grad():
            keep_all = float((model(input_ids=ids).logits - ref).abs().max())
        stage = "calibrate"
        text = torch.randint(4, 128, (2048,), generator=gen)
        spon.calibrate_(model, sequences(text, 64, 512).split(4), cfg, progress=False)
        with torch.no_grad(), spon.measure_sparsity(model) as stats:
            model(input_ids=torch.randint(4, 128, (1, 64), generator=gen))
        stage = "decode"
        spon.prepare_decode_(model)
        step = _one_step(model, prompt)
        with spon.masked_dense(model):
            ref_step = _one_step(model, prompt)
        step_diff = float((step - ref_step).abs().max())
        return (f"ok {type(model).__name__}: {len(mods)} sparse layers, {sum(dense.values()) / max(total, 1):.0%} of block"
                f" weights dense{' (notice)' if notice else ''}, keep-all |logit diff| {keep_all:.1e}, 50% measured"
                f" {stats['entries']:.1%}, {'decode step' if cached else 'one-token forward (no KV cache)'} vs masked-dense"
                f" {step_diff:.1e}")
    except Exception as e:  # noqa: BLE001  a report line per type
        return f"error at {stage}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:140]}"


def _one_step(model, prompt):
    """The logits of the first generated token's own step (a single-token forward after the prompt, with a cache)."""
    import torch
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        if getattr(out, "past_key_values", None) is None:  # no KV cache (encoders as decoders, recurrent state)
            return model(input_ids=nxt).logits  # a one-token forward: still the single-token path
        return model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True).logits


if __name__ == "__main__":
    args = sys.argv[1:]
    timeout = 180
    if "--timeout" in args:
        i = args.index("--timeout")
        timeout = int(args[i + 1])
        del args[i:i + 2]
    if args == ["--one"]:
        raise SystemExit("--one needs a model type")
    if args[:1] == ["--one"]:
        warnings.filterwarnings("ignore")
        import transformers
        transformers.logging.set_verbosity_error()
        print(check(args[1]), flush=True)
        raise SystemExit(0)
    for t in args or causal_types():
        try:
            run = subprocess.run([sys.executable, __file__, "--one", t], capture_output=True, text=True, timeout=timeout)
            line = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else f"process failed: {run.stderr.strip()[-140:]}"
        except subprocess.TimeoutExpired:
            line = f"timed out after {timeout} s"
        print(f"{t}: {line}", flush=True)
