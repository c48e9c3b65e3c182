"""Write a random Mixtral (161M parameters: 6 layers, hidden 576, 8 experts of width 1536, top-2) with SmolLM2's
tokenizer to a folder, for an offline decode benchmark of sparsified experts (no MoE checkpoint is reachable here):

    .venv/bin/python scripts/random_moe.py /tmp/moe-mixtral
    .venv/bin/spon bench decode --model /tmp/moe-mixtral --dtypes float32,bfloat16 --compile --out OUT

`--llama4`: a random Llama 4 of the same widths instead (16 experts, top-1, and a shared expert, as Llama 4 Scout;
transformers runs every expert on every token there, scaled by its routing score, zero where not routed).

Random weights (normal, std 0.05) give activations whose thresholds calibrate like any others; perplexities mean
nothing here, only speed does.
"""

import sys

import torch
import transformers as T

import spon


def main(out: str, llama4: bool = False) -> None:
    tokenizer = spon.load_model("smollm2").tokenizer
    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=6,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)
    if llama4:
        model = T.Llama4ForCausalLM(T.Llama4TextConfig(**common, num_local_experts=16, num_experts_per_tok=1,
                                                       intermediate_size_mlp=1536, head_dim=64,
                                                       interleave_moe_layer_step=1)).eval()
    else:
        model = T.MixtralForCausalLM(T.MixtralConfig(**common, num_local_experts=8, num_experts_per_tok=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.05)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters -> {out}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    main(next(a for a in sys.argv[1:] if not a.startswith("--")), llama4="--llama4" in sys.argv)
