"""The public API (unicl/api.py): load, segment, caption, batching, ensembling, bad input.

The model is a tiny randomly initialised decoder exported like `unicl export`
does: these tests check shapes, types, the shared-prefix batch and the errors,
not quality.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import unicl
from unicl.batch import collate
from unicl.tasks.user import UserItem

from .images import box_mask as _mask
from .images import rgb as _image

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def demos():
    return [(_image(40, 52, 1), _mask(40, 52)), (_image(36, 30, 2), _mask(36, 30))]


def test_segment_returns_mask_at_query_resolution(model, demos, tmp_path):
    query = _image(45, 61, 3)
    path = tmp_path / "query.png"
    Image.fromarray(query).save(path)
    mask = model.segment(query, demos, category="star")
    assert isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (45, 61)
    # a path and a PIL image of the same pixels give the same answer (greedy decoding)
    assert np.array_equal(model.segment(path, demos, category="star"), mask)
    assert np.array_equal(model.segment(Image.fromarray(query), demos, category="star"), mask)


def test_batch_shares_demos_and_matches_single_calls(model, demos):
    queries = [_image(45, 61, 3), _image(20, 33, 4)]
    batch = model.segment(queries, demos, category="star", return_details=True)
    assert [r.mask.shape for r in batch] == [(45, 61), (20, 33)]
    for query, result in zip(queries, batch):
        single = model.segment(query, demos, category="star", return_details=True)
        np.testing.assert_array_equal(single.tokens[0], result.tokens[0])
        np.testing.assert_allclose(single.probs[0], result.probs[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(single.mask, result.mask)


def test_details_and_ensemble(model, demos):
    query = _image(30, 30, 6)
    singles = [
        model.segment(query, d, category="star", return_details=True) for d in (demos[:1], demos)
    ]
    details = singles[0]
    assert details.mask_image.shape == (30, 30) and details.mask_image.dtype == np.float32
    assert len(details.tokens) == 1 and details.tokens[0].shape == details.probs[0].shape
    assert ((details.probs[0] > 0) & (details.probs[0] <= 1)).all()
    # a single prompt's mask is the task's post-processing of its tokens, close to the image
    assert (details.mask != (details.mask_image > details.threshold)).mean() < 0.2
    ensembled = model.segment(
        query, demos[:1], category="star", ensemble=[demos], return_details=True
    )
    assert len(ensembled.tokens) == 2
    mean = np.mean([s.mask_image for s in singles], axis=0)
    np.testing.assert_allclose(ensembled.mask_image, mean, atol=1e-4)
    np.testing.assert_array_equal(ensembled.mask, ensembled.mask_image > ensembled.threshold)


def test_zero_shot_with_category(model):
    assert model.segment(_image(24, 24, 7), [], category="star").shape == (24, 24)


def test_caption(model):
    image = _image(40, 52, 8)
    demos = [(image, (2, 3, 30, 20), "a small red star"), (_image(30, 30, 9), (0, 0, 30, 30), "x")]
    text = model.caption(_image(50, 50, 10), (5, 5, 40, 45), demos, category="star", max_tokens=6)
    assert isinstance(text, str)
    texts = model.caption(
        [_image(50, 50, 10), image],
        [(5, 5, 40, 45), (0, 0, 10, 10)],
        demos,
        category="star",
        max_tokens=6,
    )
    assert len(texts) == 2 and texts[0] == text
    details = model.caption(image, (5, 5, 40, 35), demos, return_details=True, max_tokens=6)
    assert isinstance(details.text, str) and details.tokens.shape == details.probs.shape
    assert 1 <= len(details.tokens) <= 6


def test_sampling_options(model, demos):
    query = _image(30, 30, 6)
    a = model.segment(query, demos, temperature=1.0, top_k=5, seed=1, return_details=True)
    b = model.segment(query, demos, temperature=1.0, top_k=5, seed=1, return_details=True)
    np.testing.assert_array_equal(a.tokens[0], b.tokens[0])
    with pytest.raises(TypeError, match="unknown sampling option"):
        model.segment(query, demos, temprature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        model.segment(query, demos, temperature=-1.0)


# ---- bad input ------------------------------------------------------------- #


def test_bad_segment_input(model, demos, tmp_path):
    query = _image(30, 30, 6)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(ValueError, match=r"query: .*not a readable image"):
        model.segment(text_file, demos)
    with pytest.raises(FileNotFoundError, match=r"demos\[0\]\[0\]: file not found"):
        model.segment(query, [(tmp_path / "missing.png", _mask(30, 30))])
    with pytest.raises(ValueError, match=r"demos\[0\]: expected a \(image, mask\) tuple"):
        model.segment(query, [(query,)])
    with pytest.raises(ValueError, match=r"demos\[1\]\[1\]: mask is 30x30"):
        model.segment(query, [demos[0], (_image(20, 20, 1), _mask(30, 30))])
    with pytest.raises(ValueError, match="demos is empty and no category"):
        model.segment(query, [])
    with pytest.raises(ValueError, match=r"ensemble\[0\]\[0\]\[1\]"):
        model.segment(query, demos, ensemble=[[(query, _mask(5, 5))]])


def test_bad_caption_input(model):
    image = _image(40, 52, 8)
    demos = [(image, (2, 3, 30, 20), "a small red star")]
    with pytest.raises(ValueError, match=r"box .* outside the image"):
        model.caption(image, (0, 0, 60, 10), demos)
    with pytest.raises(ValueError, match=r"demos\[0\]\[1\]: box .* outside"):
        model.caption(image, (0, 0, 10, 10), [(image, (0, 0, 10, 99), "x")])
    with pytest.raises(ValueError, match=r"demos\[0\]: expected a \(image, box, caption\)"):
        model.caption(image, (0, 0, 10, 10), [(image, (0, 0, 10, 10))])
    with pytest.raises(ValueError, match="box: for 2 queries"):
        model.caption([image, image], (0, 0, 10, 10), demos)


def test_load_errors(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        unicl.load(tmp_path / "nowhere")
    import shutil

    for missing in ("model.safetensors", "config.yaml", "tokenizers/vqgan/tokenizer.json"):
        broken = tmp_path / missing.replace("/", "_")
        shutil.copytree(model_dir, broken)
        (broken / missing).unlink()
        with pytest.raises(FileNotFoundError, match=missing.split("/")[-1].replace(".", r"\.")):
            unicl.load(broken)
    with pytest.raises(ValueError, match="dtype"):
        unicl.load(model_dir, dtype="int8")


# ---- the segment / caption commands ----------------------------------------- #


def test_segment_and_caption_commands(model_dir, tmp_path, capsys):
    from unicl.cli import main

    paths = {}
    for name, array in {
        "demo": _image(40, 52, 1),
        "mask": _mask(40, 52).astype(np.uint8) * 255,
        "query": _image(33, 47, 2),
    }.items():
        paths[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(array).save(paths[name])
    out = tmp_path / "pred.png"
    argv = ["segment", "--demo", paths["demo"], paths["mask"], "--query", paths["query"]]
    assert main([*argv, "--category", "star", "--out", str(out), "--model", str(model_dir)]) == 0
    with Image.open(out) as im:
        assert im.size == (47, 33) and set(np.unique(np.asarray(im))) <= {0, 255}
    argv = ["caption", "--demo", paths["demo"], "1", "2", "30", "20", "a red star"]
    argv += ["--query", paths["query"], "0", "0", "20", "20", "--model", str(model_dir)]
    assert main([*argv, "--max-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip() != ""
    # bad input: one line on stderr naming the problem, exit status 2
    bad = ["segment", "--demo", paths["demo"], str(tmp_path / "nope.png"), "--query"]
    assert (
        main(
            [*bad, paths["query"], "--out", str(tmp_path / "pred2.png"), "--model", str(model_dir)]
        )
        == 2
    )
    assert "demos[0][1]: file not found" in capsys.readouterr().err
    argv = ["caption", "--query", paths["query"], "0", "0", "99", "20", "--category", "star"]
    assert main([*argv, "--model", str(model_dir)]) == 2
    assert "outside the image" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# parallel mask answers (the shapes_tiny recipe's mask options, docs/model.md): the codes the
# predictor reads in one forward pass are the ones the training forward scores, and the API's
# mask is its soft map thresholded once
# --------------------------------------------------------------------------- #

PARALLEL = [
    'tokenizers=[{"name": "gpt2"}, {"name": "vqgan"}, {"name": "bins"}, '
    '{"name": "maskbits", "grid": 4, "cells": 2, "size": 16}]',
    "tasks.segmentation.mask_tokenizer=maskbits",
    "tasks.segmentation.mask_decoding=parallel",
    "tasks.segmentation.aligned_positions=true",
    "model.attribute_embedding=true",
    "model.code_features=true",
]


@pytest.fixture(scope="module")
def parallel_model(tmp_path_factory, make_tiny_export):
    out = make_tiny_export(tmp_path_factory.mktemp("parallel") / "tiny", overrides=PARALLEL)
    return unicl.load(out, device="cpu")


def test_parallel_mask_is_the_thresholded_soft_map(parallel_model):
    demos = [(_image(40, 52, 1), _mask(40, 52)), (_image(36, 30, 2), _mask(36, 30))]
    details = parallel_model.segment(_image(45, 61, 3), demos, category="star", return_details=True)
    assert details.mask.shape == (45, 61) and details.mask_image.shape == (45, 61)
    np.testing.assert_array_equal(details.mask, details.mask_image > details.threshold)
    assert (
        details.tokens[0].shape == (16,)
        and ((details.probs[0] > 0) & (details.probs[0] <= 1)).all()
    )


def test_parallel_inference_reads_the_distribution_training_scores(parallel_model):
    predictor = parallel_model.predictor
    demos = [UserItem(_image(40, 52, 1), _mask(40, 52))]
    images = [_image(45, 61, 3), _image(20, 33, 4)]
    episodes = predictor.prompts("segmentation", [UserItem(i) for i in images], demos, "star")
    probs = predictor.parallel_probs(episodes)
    # the same queries with a mask: packed whole, as a training sequence
    answered = predictor.prompts(
        "segmentation", [UserItem(i, _mask(*i.shape[:2])) for i in images], demos, "star"
    )
    span = predictor.vocab.ranges["maskbits"]
    for episode, full, p in zip(episodes, answered, probs):
        prompt = predictor.packer.pack(episode)
        packed = predictor.packer.pack(full)
        start, n = packed.parallel_span
        assert prompt.parallel_span == (start, n) and len(prompt) == start + n  # no answer packed
        batch = collate([packed])
        with torch.no_grad():
            logits = predictor.model(batch.input_ids, batch.attributes, batch.positions).logits[0]
        # the training forward over the whole sequence scores code i at placeholder i
        expected = logits[start : start + n, span.start : span.stop].softmax(-1)
        torch.testing.assert_close(p, expected, atol=1e-5, rtol=1e-4)
        assert (batch.loss_weights[0, start + 1 : start + n + 1] == 1).all()


def test_autoregressive_maskbits_answers_through_the_api(tmp_path, make_tiny_export):
    overrides = [o for o in PARALLEL if "mask_decoding" not in o and "aligned" not in o]
    out = make_tiny_export(tmp_path / "ar", overrides=overrides)
    model = unicl.load(out, device="cpu")
    demos = [(_image(40, 52, 1), _mask(40, 52))]
    details = model.segment(_image(45, 61, 3), demos, category="star", return_details=True)
    codes = model.predictor.vocab.ranges["maskbits"]
    assert details.mask.shape == (45, 61)
    assert sum(int(t) in codes for t in details.tokens[0]) == 16  # one code per image code
    # the mask decodes the generated codes; the grey map is the same codes' soft decoding
    assert (details.mask != (details.mask_image > details.threshold)).mean() < 0.05


def test_beam_search_and_the_tasks_default_decoding(model, monkeypatch):
    image, box = _image(50, 50, 7), (5, 5, 40, 35)
    demos = [(_image(20, 20, 3), (2, 3, 15, 20), "a small red star")]
    task = model.predictor.tasks["captioning"]
    monkeypatch.setattr(task, "num_beams", 1)  # a model whose config decodes greedily
    greedy = model.caption(image, box, demos, return_details=True, max_tokens=6)
    beams = model.caption(image, box, demos, return_details=True, max_tokens=6, num_beams=4)
    assert 1 <= len(beams.tokens) <= 6 and beams.tokens.shape == beams.probs.shape
    # a model whose captioning task beams by default answers as if asked for the beams
    monkeypatch.setattr(task, "num_beams", 4)
    default = model.caption(image, box, demos, return_details=True, max_tokens=6)
    np.testing.assert_array_equal(default.tokens, beams.tokens)
    told = model.caption(image, box, demos, return_details=True, max_tokens=6, num_beams=1)
    np.testing.assert_array_equal(told.tokens, greedy.tokens)
    # sampling asks for one sampled answer: the task's beams stand aside
    sampled = model.caption(image, box, demos, temperature=1.0, seed=3, max_tokens=6)
    assert isinstance(sampled, str)
    # masks read out of one parallel pass are not generated: beams are refused, not ignored
    with pytest.raises(ValueError, match="^num_beams: this model reads its segmentation"):
        model.segment(image, [(_image(20, 20, 3), _mask(20, 20))], num_beams=3)
