import pytest

import spon
from conftest import make_model, make_tokenizer
from spon import models


def test_local_folder(model_folder):
    lm = spon.load_model(str(model_folder))
    assert lm.identity["architecture"] == "LlamaForCausalLM" and lm.folder == model_folder
    assert lm.tokenizer("w1 w2")["input_ids"] == [4, 5]


def test_hub_id_goes_to_from_pretrained(monkeypatch):
    seen = []

    def fake(cls_name, obj):
        def from_pretrained(source, **kw):
            seen.append((cls_name, source))
            return obj
        return from_pretrained

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake("model", make_model("qwen2")))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tok", make_tokenizer()))
    lm = spon.load_model("someorg/tiny-qwen")
    assert seen == [("tok", "someorg/tiny-qwen"), ("model", "someorg/tiny-qwen")]
    assert lm.identity["name"] == "someorg/tiny-qwen" and lm.folder is None


def test_unreachable_hub_is_one_clear_error(monkeypatch):
    import transformers

    def offline(source, **kw):  # what the hub client raises with no network
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {source}.\nCheck your connection")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(spon.SponError, match="cannot load model 'nobody/no-such-model' from the hub .*couldn't connect") as e:
        spon.load_model("nobody/no-such-model")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["./missing", "/no/such/dir", "missing.gguf"])
def test_missing_paths(spec):
    with pytest.raises(spon.SponError, match="not found|does not exist"):
        spon.load_model(spec)


def test_folder_without_config(tmp_path):
    with pytest.raises(spon.SponError, match="no config.json"):
        spon.load_model(str(tmp_path))


def test_gguf_conversion_is_cached(monkeypatch, tmp_path, model_folder):
    """The GGUF path dequantises once into the cache and reuses the folder."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("SPON_CACHE", str(tmp_path / "cache"))
    calls = []
    import transformers

    def model_from(source, gguf_file=None, **kw):
        calls.append(gguf_file)
        return make_model("llama")

    real_model = transformers.AutoModelForCausalLM.from_pretrained
    real_tok = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda s, gguf_file=None, **kw: model_from(s, gguf_file) if gguf_file else real_model(s, **kw))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda s, gguf_file=None, **kw: make_tokenizer() if gguf_file else real_tok(s, **kw))
    a = spon.load_model(str(gguf))
    b = spon.load_model(str(gguf))
    assert calls == ["m.gguf"]  # dequantised once
    assert a.folder == b.folder and a.folder.parent == tmp_path / "cache"
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temporary left


def test_device_map_goes_through_accelerate(model_folder, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    lm = spon.load_model(str(model_folder), device_map="auto")
    assert seen["device_map"] == "auto" and lm.model.device.type == "cpu"
    seen.clear()
    spon.load_model(str(model_folder))
    assert "device_map" not in seen
