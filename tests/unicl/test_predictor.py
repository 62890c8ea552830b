"""The task-generic predictor (unicl/predictor.py): prompts without answers, one mask path,
demonstrations encoded once."""

import numpy as np
import pytest
import torch

import unicl
from unicl.tasks.user import UserItem

from .images import box_mask as _mask
from .images import rgb as _image

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

AUTOREGRESSIVE = [
    "tasks.segmentation.mask_decoding=autoregressive",
    "tasks.segmentation.aligned_positions=false",
]


@pytest.fixture(scope="module")
def ar_model(tmp_path_factory, make_tiny_export):
    out = make_tiny_export(tmp_path_factory.mktemp("ar") / "tiny", overrides=AUTOREGRESSIVE)
    return unicl.load(out, device="cpu")


@pytest.mark.parametrize("task", ["segmentation", "captioning"])
def test_a_prompt_answers_as_the_answered_sequence_cut_at_its_prompt(ar_model, task):
    """Packing the prompt alone generates what packing a (stand-in) answer and cutting it did."""
    predictor = ar_model.predictor
    demo = UserItem(_image(40, 52, 1), _mask(40, 52), (3.0, 4.0, 30.0, 20.0), "a red star")
    images = [_image(45, 61, 3), _image(20, 33, 4)]
    if task == "segmentation":
        demo.box = demo.text = None
        asked = [UserItem(i) for i in images]
        answered = [UserItem(i, np.zeros(i.shape[:2], bool)) for i in images]
    else:
        demo.mask = None
        asked = [UserItem(i, box=(2.0, 2.0, 15.0, 12.0)) for i in images]
        answered = [UserItem(i, box=(2.0, 2.0, 15.0, 12.0), text="?") for i in images]
    prompts = predictor.prompts(task, asked, [demo], "star")
    full = predictor.prompts(task, answered, [demo], "star")
    for prompt, whole in zip(prompts, full):
        a, b = predictor.packer.pack(prompt), predictor.packer.pack(whole)
        assert len(a) == a.prefix_length == b.prefix_length < len(b)
        assert torch.equal(a.input_ids, b.input_ids[: b.prefix_length])
        assert a.generation == b.generation
    options = predictor.sampling({"max_tokens": 6})
    for (t1, p1), (t2, p2) in zip(
        predictor.generate(prompts, options), predictor.generate(full, options)
    ):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(p1, p2)


@pytest.mark.parametrize("refine", ["none", "guided"])
@pytest.mark.parametrize("threshold", [0.5, 0.2, "expected_iou"])
@pytest.mark.parametrize("which", ["parallel", "autoregressive"])
def test_the_mask_is_its_map_thresholded_everywhere(
    model, ar_model, which, threshold, refine, monkeypatch
):
    m = model if which == "parallel" else ar_model
    monkeypatch.setattr(m.predictor.tasks["segmentation"], "mask_threshold", threshold)
    monkeypatch.setattr(m.predictor.tasks["segmentation"], "mask_refine", refine)
    demos = [(_image(40, 52, 1), _mask(40, 52)), (_image(36, 30, 2), _mask(36, 30))]
    query = _image(45, 61, 3)
    one = m.segment(query, demos, category="star", return_details=True)
    both = m.segment(query, demos, category="star", ensemble=[demos[::-1]], return_details=True)
    answer = m.predict("segmentation", query, demos, category="star")
    for r in (one, both, answer):
        assert r.mask.shape == r.mask_image.shape == (45, 61)
        np.testing.assert_array_equal(r.mask, r.mask_image > r.threshold)
        if threshold != "expected_iou":
            assert r.threshold == 255 * threshold
    np.testing.assert_array_equal(answer.mask, one.mask)  # predict and segment: one path
    assert len(both.tokens) == 2


def test_guided_refinement_filters_the_answers_map_by_the_query_image(model, monkeypatch):
    """mask_refine: guided = the unrefined map at the query's size, refined against the query
    image with a window of refine_radius x the view's side (the padded square's, here)."""
    from unicl.masks import refine_map

    task = model.predictor.tasks["segmentation"]
    demos = [(_image(40, 52, 1), _mask(40, 52))]
    query = _image(45, 61, 3)
    monkeypatch.setattr(task, "mask_refine", "none")
    plain = model.segment(query, demos, category="star", return_details=True)
    monkeypatch.setattr(task, "mask_refine", "guided")
    refined = model.segment(query, demos, category="star", return_details=True)
    expected = refine_map(plain.mask_image, query, round(task.refine_radius * 61), task.refine_eps)
    np.testing.assert_allclose(refined.mask_image, expected, atol=1e-3)
    assert not np.allclose(refined.mask_image, plain.mask_image)


def test_demonstrations_are_encoded_once_per_call(model, monkeypatch):
    """Three queries and two demonstrations: each image is VQ-encoded once."""
    vqgan = model.predictor.vocab.tokenizers["vqgan"]
    calls = []
    encode = vqgan.encode
    monkeypatch.setattr(vqgan, "encode", lambda image: calls.append(1) or encode(image))
    demos = [(_image(40, 52, 1), _mask(40, 52)), (_image(36, 30, 2), _mask(36, 30))]
    model.segment([_image(45, 61, s) for s in (3, 4, 5)], demos, category="star")
    assert len(calls) == 2 + 3


def test_aligned_autoregressive_generation_agrees_with_the_training_layout(
    make_tiny_export, tmp_path
):
    """Greedy codes generated with rewound positions are the argmax of the packed sequence that
    holds them at their image's positions (what training scores)."""
    import dataclasses

    from unicl.batch import collate

    overrides = ["tasks.segmentation.mask_decoding=autoregressive"]  # aligned stays on
    model = unicl.load(make_tiny_export(tmp_path / "aligned", overrides=overrides), device="cpu")
    predictor = model.predictor
    demo = UserItem(_image(40, 52, 1), _mask(40, 52))
    episode = predictor.prompts("segmentation", [UserItem(_image(45, 61, 3))], [demo], "star")[0]
    tokens, probs = predictor.generate([episode], predictor.sampling({}))[0]
    span = predictor.vocab.ranges["maskbits"]
    codes = [int(t) - span.start for t in tokens if int(t) in span]
    query = list(episode.query)
    query[1] = dataclasses.replace(query[1], ids=np.asarray(codes))
    packed = predictor.packer.pack(dataclasses.replace(episode, pairs=[*episode.demos, query]))
    batch = collate([packed])
    with torch.no_grad():
        logits = predictor.model(batch.input_ids, batch.attributes, batch.positions).logits[0]
    start = packed.prefix_length - 1  # the hidden state before code i predicts code i
    scores = logits[start : start + len(codes), span.start : span.stop].float().softmax(-1)
    assert scores.argmax(-1).tolist() == codes
    expected = scores[torch.arange(len(codes)), torch.tensor(codes)].numpy()
    np.testing.assert_allclose(probs[: len(codes)], expected, rtol=1e-4, atol=1e-6)
