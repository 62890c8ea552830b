"""Bad input on the `unicl` command line: one clear error message on stderr, exit status 2.

A table of wrong command lines, one or more per command: missing and surplus
arguments, bad numbers, missing paths, files where a directory belongs and back,
unknown configs, keys and registry names in `key=value` overrides. Each runs
`unicl.cli.main` in this process, in an empty working directory, and must

* exit with status 2 (argparse's status for a bad command line, and unicl's for bad input),
* print no traceback, only one message: `unicl COMMAND: error: ...`, whose first line names
  the offending argument, value or file (argparse's usage lines may come before it),
* write nothing (the working directory is unchanged).

Every case fails before any slow work: nothing trains and no world is rendered.
"""

import io
import os
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from unicl.cli import COMMANDS, main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
NOT_ROOT = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere"
)


def case(case_id, argv, *names, marks=()):
    """A bad command line and the words the first line of its error must contain.

    Placeholders in `argv`: {file} a text file, {dir} an empty directory, {missing} a path
    that does not exist, {out} an output path (never created), {image} a good PNG, {broken}
    a truncated PNG, {yaml} a YAML file that does not parse, {tar} a .tar.gz without the
    BPE table, {badtable} one holding a wrong table, {locked} a read-only directory,
    {model} a tiny exported model.
    """
    return pytest.param(argv, names, id=case_id, marks=marks)


CASES = [
    # ---- make-world ------------------------------------------------------------------------
    case("make-world/no-out", ["make-world"], "required", "out"),
    case("make-world/surplus", ["make-world", "{out}", "surplus"], "unrecognized", "surplus"),
    case("make-world/images-zero", ["make-world", "{out}", "--images", "0"], "--images", "'0'"),
    case("make-world/images-negative", ["make-world", "{out}", "--images", "-5"], "--images"),
    case("make-world/images-word", ["make-world", "{out}", "--images", "many"], "--images", "many"),
    case("make-world/images-huge", ["make-world", "{out}", "--images", "2000000"], "images"),
    case(
        "make-world/val-images-zero", ["make-world", "{out}", "--val-images", "0"], "--val-images"
    ),
    case("make-world/size-small", ["make-world", "{out}", "--size", "8"], "size", "8"),
    case("make-world/size-float", ["make-world", "{out}", "--size", "1.5"], "--size", "1.5"),
    case("make-world/unseen-unknown", ["make-world", "{out}", "--unseen", "heart,blob"], "blob"),
    case("make-world/workers-zero", ["make-world", "{out}", "--workers", "0"], "--workers"),
    case("make-world/seed-negative", ["make-world", "{out}", "--seed", "-1"], "--seed"),
    case("make-world/out-is-file", ["make-world", "{file}"], "out", "notes.txt", "not a directory"),
    case(
        "make-world/out-below-file", ["make-world", "{file}/world"], "notes.txt", "which is a file"
    ),
    case(
        "make-world/out-read-only",
        ["make-world", "{locked}/world"],
        "locked",
        "Permission denied",
        marks=NOT_ROOT,
    ),
    # ---- make-episodes ---------------------------------------------------------------------
    case("make-episodes/no-out", ["make-episodes"], "required", "out"),
    case("make-episodes/shots-zero", ["make-episodes", "{out}", "--shots", "0"], "--shots"),
    case(
        "make-episodes/queries-zero",
        ["make-episodes", "{out}", "--queries-per-category", "0"],
        "--queries-per-category",
    ),
    case("make-episodes/split", ["make-episodes", "{out}", "--split", "test"], "--split", "test"),
    case(
        "make-episodes/config-unknown",
        ["make-episodes", "{out}", "--config", "no_such_config"],
        "no_such_config",
        "not found",
    ),
    case("make-episodes/out-is-file", ["make-episodes", "{file}"], "out", "notes.txt"),
    case("make-episodes/unknown-key", ["make-episodes", "{out}", "bogus=1"], "bogus"),
    case(
        "make-episodes/not-key-value",
        ["make-episodes", "{out}", "train.steps"],
        "train.steps",
        "key=value",
    ),
    case(
        "make-episodes/unknown-task",
        ["make-episodes", "{out}", "tasks={detection: {}}"],
        "detection",
        "segmentation",
    ),
    case(
        "make-episodes/unknown-tokenizer",
        ["make-episodes", "{out}", "tokenizers=[{name: no_such_tokenizer}]"],
        "no_such_tokenizer",
        "gpt2",
    ),
    case(
        "make-episodes/unknown-plugin",
        ["make-episodes", "{out}", "plugins=[no_such_plugin_module]"],
        "no_such_plugin_module",
    ),
    case(
        "make-episodes/option-after-override",
        ["make-episodes", "{out}", "train.steps=abc", "--shots", "2"],
        "train.steps",
        "abc",
    ),
    # ---- train-vqgan -----------------------------------------------------------------------
    case("train-vqgan/no-config", ["train-vqgan"], "required", "config"),
    case("train-vqgan/config-unknown", ["train-vqgan", "no_such_config"], "no_such_config"),
    case("train-vqgan/config-bad-yaml", ["train-vqgan", "{yaml}"], "broken.yaml", "YAML"),
    case("train-vqgan/steps-word", ["train-vqgan", "vqgan_tiny", "steps=abc"], "steps", "abc"),
    case("train-vqgan/unknown-key", ["train-vqgan", "vqgan_tiny", "bogus=1"], "bogus"),
    case(
        "train-vqgan/out-is-file",
        ["train-vqgan", "vqgan_tiny", "out={file}"],
        "notes.txt",
        "not a folder",
    ),
    case(
        "train-vqgan/device-cuda",
        ["train-vqgan", "vqgan_tiny", "device=cuda"],
        "cuda",
        "CUDA",
        marks=NO_CUDA,
    ),
    # ---- fetch-bpe -------------------------------------------------------------------------
    case("fetch-bpe/surplus", ["fetch-bpe", "surplus"], "unrecognized", "surplus"),
    case(
        "fetch-bpe/sdist-missing",
        ["fetch-bpe", "--sdist", "{missing}.tar.gz", "--dest", "{out}"],
        "--sdist",
        "missing.tar.gz",
    ),
    case(
        "fetch-bpe/sdist-is-dir",
        ["fetch-bpe", "--sdist", "{dir}", "--dest", "{out}"],
        "--sdist",
        "folder",
    ),
    case(
        "fetch-bpe/sdist-without-table",
        ["fetch-bpe", "--sdist", "{tar}", "--dest", "{out}/gpt2.tiktoken"],
        "other.tar.gz",
        "gpt2.tiktoken",
    ),
    case(
        "fetch-bpe/sdist-wrong-table",
        ["fetch-bpe", "--sdist", "{badtable}", "--dest", "{out}/gpt2.tiktoken"],
        "sha256",
    ),
    # ---- train -----------------------------------------------------------------------------
    case("train/no-config", ["train"], "required", "config"),
    case("train/config-unknown", ["train", "no_such_config"], "no_such_config", "not found"),
    case("train/config-not-mapping", ["train", "{file}"], "notes.txt", "mapping"),
    case("train/steps-word", ["train", "shapes_tiny", "train.steps=abc"], "train.steps", "abc"),
    case("train/steps-negative", ["train", "shapes_tiny", "train.steps=-1"], "train.steps", "-1"),
    case("train/unknown-key", ["train", "shapes_tiny", "train.bogus=1"], "bogus"),
    case("train/unknown-section", ["train", "shapes_tiny", "bogus.key=1"], "bogus"),
    case(
        "train/not-key-value", ["train", "shapes_tiny", "train.steps"], "train.steps", "key=value"
    ),
    case("train/value-not-yaml", ["train", "shapes_tiny", "train.lr=[1"], "train.lr"),
    case("train/unknown-option", ["train", "shapes_tiny", "--fast"], "unrecognized", "--fast"),
    # options may stand before, between or after the overrides
    case(
        "train/option-before-override",
        ["train", "shapes_tiny", "--no-progress", "train.steps=abc"],
        "train.steps",
        "abc",
    ),
    case(
        "train/option-after-override",
        ["train", "shapes_tiny", "train.steps=abc", "--no-progress"],
        "train.steps",
        "abc",
    ),
    # ---- eval ------------------------------------------------------------------------------
    case("eval/no-run", ["eval"], "required", "RUN"),
    case("eval/run-missing", ["eval", "{missing}"], "missing"),
    case("eval/run-is-file", ["eval", "{file}"], "notes.txt", "not a directory"),
    case("eval/run-not-a-model", ["eval", "{dir}"], "folder"),
    case("eval/threads-zero", ["eval", "{dir}", "--threads", "0"], "--threads", "'0'"),
    case("eval/shots-negative", ["eval", "{dir}", "--shots", "-1"], "--shots"),
    case("eval/shots-empty", ["eval", "{dir}", "--shots"], "--shots", "at least one"),
    case("eval/ensemble-zero", ["eval", "{dir}", "--ensemble", "0"], "--ensemble"),
    case("eval/batch-size-zero", ["eval", "{dir}", "--batch-size", "0"], "--batch-size"),
    case("eval/data-unknown-key", ["eval", "{dir}", "--data", "rot=x"], "data.rot", "root"),
    case("eval/data-prefixed", ["eval", "{dir}", "--data", "data.root=x"], "without 'data.'"),
    case("eval/data-not-key-value", ["eval", "{dir}", "--data", "root"], "key=value"),
    case("eval/task-unknown", ["eval", "{dir}", "--task", "detection"], "--task", "detection"),
    case("eval/split-unknown", ["eval", "{dir}", "--split", "test"], "--split", "test"),
    case("eval/episodes-missing", ["eval", "{dir}", "--episodes", "{missing}"], "--episodes"),
    case("eval/episodes-is-file", ["eval", "{dir}", "--episodes", "{file}"], "--episodes"),
    case("eval/out-is-file", ["eval", "{dir}", "--out", "{file}"], "--out", "notes.txt"),
    case(
        "eval/device-cuda", ["eval", "{dir}", "--device", "cuda"], "--device", "CUDA", marks=NO_CUDA
    ),
    case("eval/device-unknown", ["eval", "{dir}", "--device", "banana"], "--device", "banana"),
    # ---- segment ---------------------------------------------------------------------------
    case("segment/no-query", ["segment"], "required", "--query", "--out"),
    case(
        "segment/demo-one-path",
        ["segment", "--demo", "{image}", "--query", "{image}", "--out", "p.png"],
        "--demo",
        "2 arguments",
    ),
    case("segment/out-is-dir", ["segment", "--query", "{image}", "--out", "{dir}"], "--out"),
    case(
        "segment/out-not-image",
        ["segment", "--query", "{image}", "--out", "mask.txt"],
        "--out",
        "mask.txt",
    ),
    case(
        "segment/model-missing",
        ["segment", "--query", "{image}", "--out", "{out}.png", "--model", "{missing}"],
        "missing",
    ),
    case(
        "segment/top-k-zero",
        ["segment", "--query", "{image}", "--out", "p.png", "--top-k", "0"],
        "--top-k",
    ),
    case(
        "segment/device-cuda",
        ["segment", "--query", "{image}", "--out", "p.png", "--device", "cuda"],
        "--device",
        marks=NO_CUDA,
    ),
    case(
        "segment/query-missing",
        ["segment", "--query", "{missing}.png", "--out", "{out}.png", "--model", "{model}"],
        "query",
        "missing.png",
    ),
    case(
        "segment/query-truncated",
        ["segment", "--query", "{broken}", "--out", "{out}.png", "--model", "{model}"],
        "query",
        "broken.png",
    ),
    case(
        "segment/mask-missing",
        ["segment", "--demo", "{image}", "{missing}.png", "--query", "{image}"]
        + ["--out", "{out}.png", "--model", "{model}"],
        "missing.png",
    ),
    # ---- caption ---------------------------------------------------------------------------
    case("caption/no-query", ["caption"], "required", "--query"),
    case("caption/box-short", ["caption", "--query", "{image}", "0", "0", "1"], "--query", "5"),
    case(
        "caption/box-words",
        ["caption", "--query", "{image}", "0", "0", "a", "b"],
        "--query",
        "numbers",
    ),
    case(
        "caption/demo-box-words",
        ["caption", "--demo", "{image}", "0", "0", "x", "1", "a star"]
        + ["--query", "{image}", "0", "0", "1", "1"],
        "--demo 1",
    ),
    case(
        "caption/temperature-word",
        ["caption", "--query", "{image}", "0", "0", "1", "1", "--temperature", "hot"],
        "--temperature",
        "hot",
    ),
    case(
        "caption/model-missing",
        ["caption", "--query", "{image}", "0", "0", "1", "1", "--model", "{missing}"],
        "missing",
    ),
    case(
        "caption/query-is-dir",
        ["caption", "--query", "{dir}", "0", "0", "5", "5", "--model", "{model}"],
        "query",
        "folder",
    ),
    # ---- export ----------------------------------------------------------------------------
    case("export/no-out", ["export", "{dir}"], "required", "out"),
    case("export/run-missing", ["export", "{missing}", "{out}"], "missing"),
    case("export/not-a-run", ["export", "{dir}", "{out}"], "folder", "checkpoint"),
    case("export/out-is-file", ["export", "{dir}", "{file}"], "out", "notes.txt"),
    # ---- demo ------------------------------------------------------------------------------
    case("demo/config-unknown", ["demo", "--config", "no_such_config"], "no_such_config"),
    case("demo/queries-zero", ["demo", "--queries-per-category", "0"], "--queries-per-category"),
    case("demo/out-is-file", ["demo", "--out", "{file}"], "--out", "notes.txt"),
    case("demo/run-is-file", ["demo", "--run", "{file}"], "--run", "notes.txt"),
    case("demo/steps-word", ["demo", "--no-progress", "train.steps=abc"], "train.steps", "abc"),
    case("demo/unknown-key", ["demo", "bogus=1"], "bogus"),
    # ---- the top level ---------------------------------------------------------------------
    case("unicl/unknown-command", ["frobnicate"], "invalid choice", "frobnicate"),
    case("unicl/unknown-option", ["--fast"], "unrecognized", "--fast"),
]


#: placeholder -> the file or directory `workdir` makes for it ({missing} and {out} it does not)
PLACES = {
    "file": "notes.txt",
    "dir": "folder",
    "missing": "missing",
    "out": "out",
    "image": "image.png",
    "broken": "broken.png",
    "yaml": "broken.yaml",
    "tar": "other.tar.gz",
    "badtable": "badtable.tar.gz",
    "locked": "locked",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, make_tiny_export):
    return make_tiny_export(tmp_path_factory.mktemp("export") / "tiny")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory holding the placeholders' files (see `case`)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a config, an image or a directory\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "broken.yaml").write_text("steps: [1, 2\n")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    data = (tmp_path / "image.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(data[: len(data) // 2])
    _tar(tmp_path / "other.tar.gz", "package-1.0/README", b"no table here\n")
    _tar(tmp_path / "badtable.tar.gz", "w-1/whisper/assets/gpt2.tiktoken", b"Zm9v 0\n")
    (tmp_path / "locked").mkdir(mode=0o500)
    yield tmp_path
    (tmp_path / "locked").chmod(0o700)  # so that pytest can remove it


def _tar(path, member, payload):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))


def run(argv, capsys):
    """(exit status, stderr) of `unicl ARGV`; argparse's errors exit by SystemExit."""
    try:
        status = main(argv)
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("argv, names", CASES)
def test_bad_input_is_one_clear_error(argv, names, workdir, request, capsys):
    places = dict(PLACES)
    if any("{model}" in a for a in argv):
        places["model"] = str(request.getfixturevalue("model_dir"))
    argv = [re.sub(r"\{(\w+)\}", lambda m: places.get(m[1], m[0]), a) for a in argv]
    before = _files(workdir)
    status, err = run(argv, capsys)
    assert status == 2, err
    assert "Traceback" not in err
    prefix = f"unicl {argv[0]}: error: " if argv[0] in COMMANDS else "unicl: error: "
    lines = err.strip().splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith(prefix)), None)
    assert first is not None, err
    # before the error: only argparse's usage (its first line, then indented ones); after it
    # only the rest of the same message (a YAML syntax error quotes the line, for one)
    assert all(line.startswith(("usage: ", " ")) for line in lines[:first]), err
    assert not any(line.startswith("unicl") for line in lines[first + 1 :]), err
    for name in names:
        assert name in lines[first], f"{name!r} not named in: {lines[first]}"
    assert _files(workdir) == before, "a failed command wrote files"


def test_the_table_covers_every_command():
    commands = {param.values[0][0] for param in CASES}
    assert set(COMMANDS) <= commands
    assert len(CASES) >= 40
    assert len({param.id for param in CASES}) == len(CASES)


def test_options_may_follow_the_overrides(capsys):
    """`unicl train CONFIG --no-progress key=value`: the override is an override, not an
    unrecognised argument (it then fails on its value, before any training)."""
    status, err = run(["train", "shapes_tiny", "--no-progress", "train.steps=abc"], capsys)
    assert status == 2
    assert "unrecognized arguments" not in err
    assert err.strip() == "unicl train: error: train.steps: expected int, got 'abc'"
