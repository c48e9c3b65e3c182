"""Shared test helpers: tiny random models of six architectures built in the test (offline, a few MB each), a word-level
tokenizer, random text, and calibrated / SPON-carrying models."""

from __future__ import annotations

import shutil

import pytest
import torch

import spon
from transformers import (
    FalconConfig,
    FalconForCausalLM,
    Gemma3ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

HAVE_CC = bool(shutil.which("gcc") or shutil.which("cc"))
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler: the CPU kernel cannot be built here")

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256,
)
ARCHS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON)),  # q/k/v projections carry biases
    "mistral": lambda: MistralForCausalLM(MistralConfig(**COMMON, sliding_window=64)),
    "gemma3": lambda: Gemma3ForCausalLM(Gemma3TextConfig(**COMMON, head_dim=8, sliding_window=64)),
    # GPT-2's projections are transformers' Conv1D (weight stored [in, out]), with biases
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2)),
    # Falcon's projections are FalconLinear, a subclass of nn.Linear; fused query_key_value, multi-query attention
    "falcon": lambda: FalconForCausalLM(FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                     max_position_embeddings=256, bos_token_id=1, eos_token_id=2)),
}
# gpt2: c_attn, c_proj, c_fc, c_proj; falcon: query_key_value, dense, dense_h_to_4h, dense_4h_to_h;
# the others: q, k, v, o, gate, up, down
LINEARS_PER_BLOCK = {"gpt2": 4, "falcon": 4}


def make_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = ARCHS[arch]().eval()
    with torch.no_grad():  # random init has tiny weights; make activations spread like a trained model's
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


@pytest.fixture(params=sorted(ARCHS))
def arch(request) -> str:
    return request.param


def random_ids(batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


WORDS = [f"w{i}" for i in range(VOCAB - 3)]


def make_tokenizer(specials: tuple[str, str, str] = ("<unk>", "<bos>", "<eos>"),
                   add_bos: bool | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over w0..w92 with <unk>, <bos>, <eos> at ids 0-2 in the order `specials` gives; adds no
    BOS (like SmolLM2). With `add_bos` set: one that adds BOS or not and rebuilds itself when `add_bos_token` moves
    (transformers 5's fast tokenizers do; in 4, Llama's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {**{t: i for i, t in enumerate(specials)}, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos is not None:
        from transformers import LlamaTokenizerFast

        cls = PreTrainedTokenizerFast if hasattr(PreTrainedTokenizerFast, "update_post_processor") else LlamaTokenizerFast
        return cls(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", add_bos_token=add_bos,
                   add_eos_token=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>")


def random_text(n_words: int, seed: int = 0, distinct: int = len(WORDS)) -> str:
    """Blank-line separated lines of 40 words drawn from the first `distinct` words."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(distinct, (n_words,), generator=g)
    words = [WORDS[i] for i in idx.tolist()]
    lines = [" ".join(words[i : i + 40]) for i in range(0, len(words), 40)]
    return "\n\n".join(lines)


@pytest.fixture
def model_folder(tmp_path):
    """A tiny Llama with its tokenizer saved as a Hugging Face folder."""
    folder = tmp_path / "tiny-llama"
    make_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


CUSTOM_CONFIG = '''from transformers import LlamaConfig


class TinyCustomConfig(LlamaConfig):
    model_type = "tiny-custom"
'''
CUSTOM_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_tiny import TinyCustomConfig


class TinyCustomForCausalLM(LlamaForCausalLM):
    config_class = TinyCustomConfig
'''


@pytest.fixture
def custom_code_folder(model_folder):
    """The tiny Llama as a model that ships its own code: an architecture transformers does not know."""
    import json

    (model_folder / "configuration_tiny.py").write_text(CUSTOM_CONFIG)
    (model_folder / "modeling_tiny.py").write_text(CUSTOM_MODEL)
    config = json.loads((model_folder / "config.json").read_text())
    config.update(model_type="tiny-custom", architectures=["TinyCustomForCausalLM"], auto_map={
        "AutoConfig": "configuration_tiny.TinyCustomConfig", "AutoModelForCausalLM": "modeling_tiny.TinyCustomForCausalLM"})
    (model_folder / "config.json").write_text(json.dumps(config))
    return model_folder


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(random_text(6000))
    return path


def calibrated(arch: str, sparsity: float = 0.5, **kw):
    """A tiny model of `arch`, sparsified and calibrated on random ids; returns (model, config)."""
    model = make_model(arch)
    cfg = spon.SparsityConfig(sparsity=sparsity, **kw)
    spon.sparsify_(model, cfg)
    spon.calibrate_(model, [random_ids(2, 32, seed=s) for s in range(4)], cfg, progress=False)
    return model, cfg


def with_random_alphas(model, seed: int = 0, scale: float = 0.05):
    """Give every sparse layer a random spontaneous vector (as if trained)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in spon.sparse_modules(model).values():
            m.alpha.copy_(torch.randn(m.in_features, generator=g) * scale)
    return model


def pytest_collection_modifyitems(config, items):
    """Tests in tests/cli run the command line end to end: mark them, like the real-model ones, so `-m "not cli"` skips them."""
    for item in items:
        if "/cli/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.cli)
