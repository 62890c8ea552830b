"""The unified vocabulary: paper counts, id ranges, global <-> local ids, plugins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from unicl.config import ConfigError, UniclConfig, from_dict, load_config
from unicl.plugins import import_plugins
from unicl.tokenizers import build_tokenizer
from unicl.vocab import BASE_SPECIALS, CAPTION_TAGS, VocabConfig, Vocabulary

PLUGIN_DIR = Path(__file__).parent / "fixtures_plugin"
# an untrained tiny quantizer: the vocabulary only needs its size (1024 codes)
VQGAN = {"name": "vqgan", "checkpoint": None}


@pytest.fixture(scope="module")
def toks():
    return {
        "gpt2": build_tokenizer({"name": "gpt2"}),
        "vqgan": build_tokenizer(VQGAN),
        "bins": build_tokenizer({"name": "bins"}),
    }


def test_paper_base_count(toks):
    vocab = Vocabulary([toks["gpt2"], toks["vqgan"]], VocabConfig(tags=[]))
    assert len(vocab) == 51290 == 50257 + 1024 + 9
    assert vocab.ranges["gpt2"] == range(0, 50257)
    assert vocab.ranges["vqgan"] == range(50257, 51281)
    assert vocab.ranges["special"] == range(51281, 51290)
    assert vocab.embedding_size == 51328 and vocab.embedding_size % 64 == 0
    assert [vocab[s] for s in BASE_SPECIALS] == list(range(51281, 51290))


def test_paper_count_with_category_and_box_tokens(toks):
    vocab = Vocabulary([toks["gpt2"], toks["vqgan"], toks["bins"]])
    assert len(vocab) == 52295 == 50257 + 1024 + 1001 + 9 + 4
    assert vocab.ranges["bins"] == range(51281, 52282)
    assert vocab.spans == ["gpt2", "vqgan", "bins", "special"]
    assert [vocab[t] for t in CAPTION_TAGS] == [52291, 52292, 52293, 52294]
    assert vocab.pad_id == vocab["[PAD]"] == 52282
    assert "[BOI]" in vocab and "[NOPE]" not in vocab
    with pytest.raises(KeyError, match="not a special token"):
        vocab["[NOPE]"]


def test_global_local_and_spans(toks):
    vocab = Vocabulary([toks["gpt2"], toks["vqgan"], toks["bins"]])
    ids = vocab.encode("gpt2", "Hello world")
    assert ids.tolist() == [15496, 995]
    box = vocab.encode("bins", [0.0, 0.5, 1.0, 0.25])
    assert box.tolist() == [51281, 51781, 52281, 51531]
    assert vocab.decode("bins", box).tolist() == [0.0, 0.5, 1.0, 0.25]
    assert vocab.to_local("vqgan", torch.tensor([50257, 51280])).tolist() == [0, 1023]
    assert vocab.to_global("vqgan", [0, 1023]).tolist() == [50257, 51280]
    mixed = torch.tensor([0, 50256, 50257, 51280, 51281, 52281, 52282, 52294])
    assert vocab.span_index(mixed).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert vocab.span_of(52290) == "special"
    assert vocab.decode("gpt2", ids) == "Hello world"


def test_bad_ids(toks):
    vocab = Vocabulary([toks["gpt2"], toks["vqgan"], toks["bins"]])
    with pytest.raises(ValueError, match="not all vqgan ids"):
        vocab.to_local("vqgan", [100])
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        vocab.to_global("vqgan", [1024])
    with pytest.raises(ValueError, match="global ids"):
        vocab.span_index(torch.tensor([52295]))
    with pytest.raises(KeyError, match="configured: gpt2, vqgan, bins"):
        vocab.encode("audio", "x")


def test_allowed_mask(toks):
    vocab = Vocabulary([toks["gpt2"], toks["vqgan"], toks["bins"]])
    mask = vocab.allowed_mask(["vqgan"], ["[EOC]"])
    assert mask.shape == (vocab.embedding_size,)
    assert mask.sum() == 1025 and mask[50257] and mask[vocab["[EOC]"]] and not mask[0]
    assert not vocab.allowed_mask(["gpt2", "bins", "vqgan", "special"])[len(vocab) :].any()


def test_config_errors(toks):
    with pytest.raises(ValueError, match="configured twice"):
        Vocabulary([toks["bins"], toks["bins"]])
    with pytest.raises(ValueError, match="listed twice"):
        VocabConfig(tags=["[BOI]"])
    with pytest.raises(ValueError, match=r"\[PAD\]"):
        VocabConfig(specials=["[BOI]"])


def test_default_config_tokenizers_order(toks):
    cfg = from_dict(UniclConfig, {"tokenizers": [{"name": "gpt2"}, VQGAN, {"name": "bins"}]})
    vocab = Vocabulary.from_config(cfg)
    assert len(vocab) == 52295
    assert [t["name"] for t in UniclConfig().tokenizers] == ["gpt2", "vqgan", "bins"]
    # the defaults as they are (vqgan = the shipped builtin:vqgan_shapes_tiny)
    default = Vocabulary.from_config(UniclConfig())
    assert len(default) == 52295 and default.tokenizers["vqgan"].codes_per_image == 64


def test_external_plugin_grows_the_vocabulary(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    config = tmp_path / "plugin.yaml"
    config.write_text(
        "plugins: [unicl_digits_plugin]\n"
        "tokenizers:\n"
        "  - {name: gpt2}\n"
        "  - {name: vqgan, checkpoint: null}\n"
        "  - {name: bins}\n"
        "  - {name: digits, base: 7}\n"
    )
    cfg = load_config(config)
    vocab = Vocabulary.from_config(cfg)
    assert len(vocab) == 52295 + 7
    assert vocab.ranges["digits"] == range(52282, 52289)
    assert vocab.encode("digits", "605").tolist() == [52288, 52282, 52287]
    assert vocab.decode("digits", [52288, 52282, 52287]) == "605"
    assert vocab.span_of(52285) == "digits"
    assert vocab.tokenizers["digits"].modality == "number"


def test_import_plugins_errors():
    with pytest.raises(ImportError, match="plugin 'no_such_unicl_plugin'"):
        import_plugins(["no_such_unicl_plugin"])
    with pytest.raises(TypeError, match="list of module names"):
        import_plugins("unicl_digits_plugin")
    assert import_plugins([]) == []
    assert import_plugins(["json"])[0] is sys.modules["json"]


def test_unknown_tokenizer_lists_valid_names():
    with pytest.raises(ValueError, match="valid tokenizer names: .*bins.*gpt2.*vqgan"):
        Vocabulary.from_config(from_dict(UniclConfig, {"tokenizers": [{"name": "audio"}]}))
    with pytest.raises(TypeError, match="unknown option"):
        build_tokenizer({"name": "bins", "bogus": 1})
    with pytest.raises(ConfigError):
        from_dict(UniclConfig, {"vocab": {"pad_to_multiple": "x"}})
