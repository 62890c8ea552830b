"""The "gpt2" tokenizer: GPT-2's exact ids offline, table lookup order, installation."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
import torch

from unicl.paths import GPT2_BPE_SHA256
from unicl.tokenizers import build_tokenizer, load_tokenizer
from unicl.tokenizers.gpt2 import GPT2Tokenizer, install_gpt2_bpe, resolve_bpe_file


@pytest.fixture(scope="module")
def tok() -> GPT2Tokenizer:
    # The normal lookup (option > $UNICL_GPT2_BPE > cache): a missing table fails with
    # the message that says to run `unicl fetch-bpe`, which is what CI installs.
    return build_tokenizer({"name": "gpt2"})


def test_known_ids(tok):
    assert tok.vocab_size == 50257
    assert tok.encode("Hello world").tolist() == [15496, 995]
    assert tok.encode("Hello world").dtype == torch.int64
    # GPT-2's well-known ids: " the" = 262, "," = 11, "<|endoftext|>" = 50256
    assert tok.encode(" the").tolist() == [262]
    assert tok.encode(",").tolist() == [11]
    assert tok.eot_id == 50256
    assert tok.encoding.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_round_trip_unicode_and_whitespace(tok):
    texts = ["A red star  above\ta blue ring.\n", "naïve café ☃ 日本語", "it's we'll 123 4567"]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    batch = tok.encode_batch(texts)
    assert [b.tolist() for b in batch] == [tok.encode(t).tolist() for t in texts]
    assert tok.decode_batch(batch) == texts


def test_endoftext_in_user_text_is_literal(tok):
    ids = tok.encode("a <|endoftext|> b").tolist()
    assert 50256 not in ids
    assert tok.decode(ids) == "a <|endoftext|> b"


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["a"]])
def test_non_str_text_is_type_error(tok, bad):
    with pytest.raises(TypeError, match="must be a str"):
        tok.encode(bad)


def test_empty_text_is_value_error(tok):
    with pytest.raises(ValueError, match="empty"):
        tok.encode("")
    with pytest.raises(ValueError, match="empty"):
        tok.encode_batch(["ok", ""])


def test_ids_out_of_range(tok):
    with pytest.raises(ValueError, match=r"outside the tokenizer's range \[0, 50257\)"):
        tok.decode([15496, 50257])
    with pytest.raises(ValueError, match="outside"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="integers"):
        tok.decode(torch.tensor([1.0, 2.0]))


def test_lookup_order_and_missing_table(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("UNICL_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("UNICL_GPT2_BPE", raising=False)
    with pytest.raises(FileNotFoundError, match="unicl fetch-bpe"):
        GPT2Tokenizer()
    # the environment variable is used when no option is given
    monkeypatch.setenv("UNICL_GPT2_BPE", str(tok.bpe_path))
    assert resolve_bpe_file() == tok.bpe_path
    assert GPT2Tokenizer().encode("Hello world").tolist() == [15496, 995]
    # the option wins over the environment
    monkeypatch.setenv("UNICL_GPT2_BPE", str(tmp_path / "nowhere"))
    assert GPT2Tokenizer(bpe_file=str(tok.bpe_path)).vocab_size == 50257
    with pytest.raises(FileNotFoundError, match="bpe_file"):
        GPT2Tokenizer(bpe_file=str(tmp_path / "missing.tiktoken"))


def test_wrong_table_is_rejected(tmp_path):
    bad = tmp_path / "small.tiktoken"
    bad.write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(ValueError, match="not GPT-2's"):
        GPT2Tokenizer(bpe_file=str(bad))


def test_save_and_load_carry_the_table(tmp_path, tok):
    saved = tok.save(tmp_path / "tok")
    assert (saved / "gpt2.tiktoken").is_file()
    again = load_tokenizer(saved)
    assert again.encode("Hello world").tolist() == [15496, 995]


def _fake_sdist(path, payload: bytes):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("openai_whisper-20250625/whisper/assets/gpt2.tiktoken")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


def test_install_from_sdist_is_checked_and_idempotent(tmp_path, tok):
    table = tok.bpe_path.read_bytes()
    assert hashlib.sha256(table).hexdigest() == GPT2_BPE_SHA256
    sdist = _fake_sdist(tmp_path / "openai_whisper-20250625.tar.gz", table)
    dest = tmp_path / "cache" / "gpt2.tiktoken"
    assert install_gpt2_bpe(sdist=sdist, dest=dest) == dest
    assert dest.read_bytes() == table
    # second call: nothing to do, even with no sdist (no download is attempted)
    mtime = dest.stat().st_mtime_ns
    assert install_gpt2_bpe(dest=dest) == dest
    assert dest.stat().st_mtime_ns == mtime
    # a tampered table is refused and nothing is written
    forged = _fake_sdist(tmp_path / "forged.tar.gz", table[:-10] + b"0000000000")
    with pytest.raises(ValueError, match="sha256"):
        install_gpt2_bpe(sdist=forged, dest=tmp_path / "other" / "gpt2.tiktoken")
    assert not (tmp_path / "other" / "gpt2.tiktoken").exists()
    with pytest.raises(FileNotFoundError):
        install_gpt2_bpe(sdist=tmp_path / "none.tar.gz", dest=tmp_path / "x" / "gpt2.tiktoken")
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(ValueError, match="holds no"):
        install_gpt2_bpe(sdist=empty, dest=tmp_path / "y" / "gpt2.tiktoken")


def test_fetch_bpe_command(tmp_path, tok, capsys):
    from unicl.cli import main

    sdist = _fake_sdist(tmp_path / "w.tar.gz", tok.bpe_path.read_bytes())
    # --dest may name an existing directory (the file goes inside) or a file path
    assert main(["fetch-bpe", "--sdist", str(sdist), "--dest", str(tmp_path)]) == 0
    assert (tmp_path / "gpt2.tiktoken").read_bytes() == tok.bpe_path.read_bytes()
    assert "ready" in capsys.readouterr().out


# --------------------------------------------------------------------------- #
# subsets
# --------------------------------------------------------------------------- #

SUBSET_CORPUS = [" a red circle at the top left", "Category:", " the big blue star is behind"]


def test_a_subset_encodes_its_corpus_exactly_as_gpt2(tmp_path):
    from unicl.tokenizers.gpt2 import write_subset

    path = write_subset(SUBSET_CORPUS, tmp_path / "subset.json")
    sub, full = GPT2Tokenizer(subset_file=str(path)), GPT2Tokenizer()
    assert 256 < sub.vocab_size < 400
    for text in SUBSET_CORPUS:
        local = sub.encode(text)
        assert int(local.max()) < sub.vocab_size
        assert sub.gpt2_ids[local.numpy()].tolist() == full.encode(text).tolist()
        assert sub.decode(local) == text
    assert sub.gpt2_ids[sub.eot_id] == 50256 and sub.eot_id == sub.vocab_size - 1


@pytest.mark.parametrize("text", [" a hexagonal zorblax", "Ünïcode ✓ 123", "\n\t  x"])
def test_a_subset_still_encodes_any_text(tmp_path, text):
    from unicl.tokenizers.gpt2 import write_subset

    sub = GPT2Tokenizer(subset_file=str(write_subset(SUBSET_CORPUS, tmp_path / "s.json")))
    ids = sub.encode(text)
    assert ids.min() >= 0 and ids.max() < sub.vocab_size and sub.decode(ids) == text


def test_the_builtin_shapes_subset_covers_the_world_phrases():
    from unicl.tasks.world_shapes import CATEGORIES

    sub, full = GPT2Tokenizer(subset_file="builtin:shapes"), GPT2Tokenizer()
    assert sub.vocab_size < 1000
    for category in CATEGORIES:
        text = f" {category.name}"
        assert sub.gpt2_ids[sub.encode(text).numpy()].tolist() == full.encode(text).tolist()


def test_a_subset_tokenizer_saves_and_loads(tmp_path):
    from unicl.tokenizers.base import load_tokenizer

    sub = GPT2Tokenizer(subset_file="builtin:shapes")
    sub.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.vocab_size == sub.vocab_size
    assert again.encode(" a red star").tolist() == sub.encode(" a red star").tolist()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[1, 2]", "not a gpt2 subset file"),
        ('{"format": "unicl-gpt2-subset", "gpt2_ids": [1, "a"]}', "gpt2_ids must be"),
        ('{"format": "unicl-gpt2-subset", "gpt2_ids": [1, 2, 50256]}', "all 256 single bytes"),
        ("not json", "not a gpt2 subset file"),
    ],
)
def test_bad_subset_files_are_named(tmp_path, content, match):
    path = tmp_path / "subset.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        GPT2Tokenizer(subset_file=str(path))


def test_unknown_builtin_subset_and_missing_file():
    with pytest.raises(ValueError, match="builtin:shapes"):
        GPT2Tokenizer(subset_file="builtin:nope")
    with pytest.raises(FileNotFoundError, match="subset file not found"):
        GPT2Tokenizer(subset_file="/no/such/subset.json")
