"""Parallel mask answers end to end: training layout, inference and the API agree.

A tiny random model with the shapes_tiny recipe's mask options (maskbits codes on the image's
grid, parallel answers, aligned positions, attribute embedding, code features): the codes the
predictor reads in one forward pass are exactly the ones the training forward scores, and the
API's mask is its soft map thresholded once.
"""

import numpy as np
import pytest
import torch

import unicl
from unicl.batch import collate
from unicl.inputs import ImageItem

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

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
def model(tmp_path_factory, make_tiny_export):
    out = make_tiny_export(tmp_path_factory.mktemp("parallel") / "tiny", overrides=PARALLEL)
    return unicl.load(out, device="cpu")


def _image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h, w):
    mask = np.zeros((h, w), bool)
    mask[h // 4 : h // 2, w // 3 : w // 2 + 2] = True
    return mask


def test_api_mask_is_the_thresholded_soft_map(model):
    demos = [(_image(40, 52, 1), _mask(40, 52)), (_image(36, 30, 2), _mask(36, 30))]
    details = model.segment(_image(45, 61, 3), demos, category="star", return_details=True)
    assert details.mask.shape == (45, 61) and details.mask_image.shape == (45, 61)
    np.testing.assert_array_equal(details.mask, details.mask_image > 127)
    assert (
        details.tokens[0].shape == (16,)
        and ((details.probs[0] > 0) & (details.probs[0] <= 1)).all()
    )


def test_inference_reads_the_distribution_training_scores(model):
    engine = model.engine
    demos = [ImageItem(_image(40, 52, 1), _mask(40, 52))]
    queries = [
        ImageItem(_image(45, 61, 3)),
        ImageItem(_image(20, 33, 4)),
    ]
    episodes = engine.segmentation_episodes(queries, demos, "star")
    probs = engine.mask_code_probs(episodes)
    span = engine.vocab.ranges["maskbits"]
    for episode, p in zip(episodes, probs):
        packed = engine.packer.pack(episode)
        start, n = packed.parallel_span
        batch = collate([packed])
        with torch.no_grad():
            logits = engine.model(batch.input_ids, batch.attributes, batch.positions).logits[0]
        # the training forward over the whole sequence scores code i at placeholder i
        expected = logits[start : start + n, span.start : span.stop].softmax(-1)
        torch.testing.assert_close(p, expected, atol=1e-5, rtol=1e-4)
        assert (batch.loss_weights[0, start + 1 : start + n + 1] == 1).all()
