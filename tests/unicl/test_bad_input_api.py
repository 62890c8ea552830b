"""Bad input to the public API is refused, naming the argument; good input converts exactly.

A table-driven corpus over `segment` / `caption` inputs (images, masks, boxes, demonstrations),
sampling options, the device and dtype pickers and the registries: each case asserts the
exception type and that the message names the argument (and the values or dtype it found).
The conversions that must succeed (16-bit PNGs and arrays, 0/255 and 0/1 masks, floats in
[0, 1]) are checked pixel by pixel. The model is a tiny random export (tests/conftest.py);
every bad case fails in the input checks, before any token is generated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import unicl
from unicl import inputs
from unicl.devices import pick_device, pick_dtype
from unicl.generate import Sampling
from unicl.registry import Registry, RegistryError

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

H, W = 24, 20


def _image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[h // 4 : h // 2, w // 3 : w // 2 + 2] = True
    return mask


def _demos(mask=None) -> list:
    return [(_image(1), _mask() if mask is None else mask)]


def _caption_demos() -> list:
    return [(_image(1), (2, 3, 15, 20), "a small red star")]


def _transparent(mode: str) -> Image.Image:
    """A `mode` image whose top-left pixel is fully transparent."""
    image = Image.fromarray(_image()).convert(mode)
    pixels = np.asarray(image).copy()
    pixels[0, 0, -1] = 0
    return Image.fromarray(pixels, mode)


def _int32_image() -> Image.Image:
    return Image.fromarray(_image()[:, :, 0].astype(np.int32) * 100)  # mode "I", not from a PNG


def _palette_with_transparency() -> Image.Image:
    image = Image.fromarray(_image()).convert("P")
    image.info["transparency"] = int(np.asarray(image)[0, 0])
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Small files the cases read: broken images and masks with the wrong values."""
    d = tmp_path_factory.mktemp("files")
    Image.fromarray(_image()).save(d / "good.png")
    (d / "truncated.png").write_bytes((d / "good.png").read_bytes()[:700])  # half the pixels
    (d / "fake.png").write_text("this is not an image")
    Image.fromarray(_mask().astype(np.uint8) * 2).save(d / "mask02.png")  # a label map {0, 2}
    grey = (_mask().astype(np.uint8) * 255).copy()
    grey[0, :3] = (0, 128, 255)  # JPEG-like grey levels
    Image.fromarray(grey).save(d / "grey_levels.png")
    _transparent("RGBA").save(d / "transparent.png")
    return {path.name: path for path in d.iterdir()} | {"missing.png": d / "missing.png", "dir": d}


def query(value):
    """A segment call with this query (a callable: built from the files) and good demos."""
    return lambda m, f: m.segment(value(f) if callable(value) else value, _demos())


def demo_mask(value):
    """A segment call whose one demonstration has this mask."""
    return lambda m, f: m.segment(_image(), _demos(value(f) if callable(value) else value))


def segment(**kwargs):
    """A segment call with a good query and good demos, and these keyword arguments."""
    return lambda m, f: m.segment(_image(), **{"demos": _demos(), **kwargs})


RGB_AS_MASK = np.asarray(Image.fromarray(_image()).convert("RGB")) // 128 * 255
LABELS_012 = np.arange(H * W).reshape(H, W) % 3

# (id, call(model, files), exception, pattern the message must contain)
SEGMENT = [
    # --- query images
    ("query-float-0-255", query(_image().astype(np.float32)), ValueError,
     r"^query: the float32 array has values in 0..255, not in \[0, 1\]"),
    ("query-float-negative", query(_image() / 255.0 - 0.5), ValueError,
     r"^query: the float64 array has values in .* not in \[0, 1\]"),
    ("query-nan", query(np.full((H, W, 3), np.nan)), ValueError, r"^query: .*NaN or infinite"),
    ("query-inf", query(np.full((H, W, 3), np.inf)), ValueError, r"^query: .*NaN or infinite"),
    ("query-int64", query(_image().astype(np.int64)), ValueError,
     r"^query: the int64 array has int64 pixels, whose range is unknown"),
    ("query-object-dtype", query(_image().astype(object)), ValueError, r"^query: .*object pixels"),
    ("query-zero-size", query(np.zeros((0, W, 3), np.uint8)), ValueError,
     r"^query: image is empty"),
    ("query-5-channels", query(np.zeros((H, W, 5), np.uint8)), ValueError,
     r"^query: an image has shape .* \(24, 20, 5\)"),
    ("query-4d", query(np.zeros((1, H, W, 3), np.uint8)), ValueError,
     r"^query: an image has shape"),
    ("query-rgba-transparent-array", query(np.asarray(_transparent("RGBA"))), ValueError,
     r"^query: the uint8 array has transparent pixels"),
    ("query-la-transparent-pil", query(_transparent("LA")), ValueError,
     r"^query: the PIL image \(mode 'LA'\) has transparent pixels"),
    ("query-palette-transparency", query(_palette_with_transparency()), ValueError,
     r"^query: the PIL image \(mode 'P'\) has transparent pixels"),
    ("query-pil-int32", query(_int32_image()), ValueError,
     r"^query: the PIL image \(mode 'I'\) has int32 pixels"),
    ("query-transparent-file", query(lambda f: f["transparent.png"]), ValueError,
     r"^query: file .*transparent\.png \(mode 'RGBA'\) has transparent pixels"),
    ("query-truncated-file", query(lambda f: f["truncated.png"]), ValueError,
     r"^query: .*truncated\.png is not a readable image file"),
    ("query-not-an-image", query(lambda f: f["fake.png"]), ValueError,
     r"^query: .*fake\.png is not a readable image file"),
    ("query-missing-file", query(lambda f: f["missing.png"]), FileNotFoundError,
     r"^query: file not found: .*missing\.png"),
    ("query-directory", query(lambda f: f["dir"]), ValueError, r"^query: .* is not a file"),
    ("query-number", query(42), TypeError, r"^query: expected"),
    ("query-empty-list", query([]), TypeError, r"^query: expected"),
    ("query-list-item", query([_image(), 7]), TypeError, r"^query\[1\]: expected"),
    # --- demonstration masks
    ("mask-0-2", demo_mask(_mask().astype(np.uint8) * 2), ValueError,
     r"^demos\[0\]\[1\]: mask values \{0, 2\} are not a binary mask; accepted: bool"),
    ("mask-0-1-2", demo_mask(LABELS_012), ValueError,
     r"^demos\[0\]\[1\]: mask values \{0, 1, 2\}"),
    ("mask-negative", demo_mask(-_mask().astype(np.int16)), ValueError,
     r"^demos\[0\]\[1\]: mask values \{-1, 0\}"),
    ("mask-nan", demo_mask(np.where(_mask(), np.nan, 0.0)), ValueError,
     r"^demos\[0\]\[1\]: the float mask has NaN"),
    ("mask-float-0-255", demo_mask(_mask() * 255.0), ValueError,
     r"^demos\[0\]\[1\]: the float mask has values in 0..255, not in \[0, 1\]"),
    ("mask-label-png", demo_mask(lambda f: f["mask02.png"]), ValueError,
     r"^demos\[0\]\[1\]: mask values \{0, 2\}"),
    ("mask-grey-levels-png", demo_mask(lambda f: f["grey_levels.png"]), ValueError,
     r"^demos\[0\]\[1\]: mask values \{0, 128, 255\}"),
    ("mask-transparent-png", demo_mask(lambda f: f["transparent.png"]), ValueError,
     r"^demos\[0\]\[1\]: file .* has transparent pixels"),
    ("mask-colour", demo_mask(RGB_AS_MASK), ValueError,
     r"^demos\[0\]\[1\]: the uint8 array has colours"),
    ("mask-all-background", demo_mask(np.zeros((H, W), bool)), ValueError,
     r"^demos\[0\]\[1\]: mask has no foreground pixel"),
    ("mask-wrong-size", demo_mask(_mask(5, 5)), ValueError,
     r"^demos\[0\]\[1\]: mask is 5x5 \(HxW\) but its image is 24x20"),
    ("mask-3d", demo_mask(np.zeros((H, W, 5), bool)), ValueError,
     r"^demos\[0\]\[1\]: mask arrays must have shape \(H, W\)"),
    ("mask-zero-size", demo_mask(np.zeros((0, 0), bool)), ValueError,
     r"^demos\[0\]\[1\]: mask is empty"),
    ("mask-strings", demo_mask(_mask().astype(str)), ValueError,
     r"^demos\[0\]\[1\]: the <U5 array is not a mask"),
    ("mask-number", demo_mask(1), TypeError, r"^demos\[0\]\[1\]: expected"),
    # --- demonstration sets and the other arguments
    ("demos-one-pair-not-a-list", segment(demos=(_image(1), _mask())), TypeError,
     r"^demos\[0\]: expected a \(image, mask\) tuple"),
    ("ensemble-array", segment(ensemble=np.zeros(3)), TypeError,
     r"^ensemble: expected a list of demonstration sets"),
    ("ensemble-bad-mask", segment(ensemble=[_demos(_mask() * 3)]), ValueError,
     r"^ensemble\[0\]\[0\]\[1\]: mask values \{0, 3\}"),
    ("category-number", segment(category=3), TypeError, r"^category: expected a category name"),
    ("category-blank", segment(category=" "), ValueError, r"^category: expected a category"),
    ("return-details-string", segment(return_details="yes"), TypeError,
     r"^return_details: expected True or False"),
]  # fmt: skip

CAPTION = [
    ("box-nan", (0, 0, math.nan, 5), ValueError, r"^box: box coordinates must be finite"),
    ("box-inf", (0, 0, math.inf, 5), ValueError, r"^box: box coordinates must be finite"),
    ("box-inverted", (10, 0, 5, 5), ValueError, r"^box: box must satisfy x0 < x1 and y0 < y1"),
    ("box-empty", (5, 5, 5, 9), ValueError, r"^box: box must satisfy x0 < x1"),
    ("box-outside", (0, 0, W + 1, 5), ValueError, r"^box: box .* lies outside the image"),
    ("box-negative", (-1, 0, 5, 5), ValueError, r"^box: box .* lies outside the image"),
    ("box-three-numbers", (0, 0, 5), ValueError, r"^box: a box has 4 numbers"),
    ("box-string", "0 0 5 5", TypeError, r"^box: expected a box"),
    ("box-none", None, TypeError, r"^box: expected a box"),
    ("box-bools", (False, False, True, True), TypeError, r"^box: box coordinates must be numbers"),
    ("box-words", ("a", 0, 5, 5), TypeError, r"^box: box coordinates must be numbers"),
]

CAPTION_DEMOS = [
    ("demo-box-outside", [(_image(1), (0, 0, 5, H + 3), "a star")], ValueError,
     r"^demos\[0\]\[1\]: box .* lies outside"),
    ("demo-text-blank", [(_image(1), (0, 0, 5, 5), "  ")], ValueError,
     r"^demos\[0\]\[2\]: caption is empty"),
    ("demo-text-number", [(_image(1), (0, 0, 5, 5), 7)], TypeError,
     r"^demos\[0\]\[2\]: expected a caption string"),
    ("demo-missing-caption", [(_image(1), (0, 0, 5, 5))], ValueError,
     r"^demos\[0\]: expected a \(image, box, caption\) tuple of 3 items"),
]  # fmt: skip

SAMPLING = [
    ("temperature-inf", {"temperature": math.inf}, ValueError, r"^temperature must be a finite"),
    ("temperature-nan", {"temperature": math.nan}, ValueError, r"^temperature must be a finite"),
    ("temperature-negative", {"temperature": -0.5}, ValueError, r"^temperature must be"),
    ("temperature-bool", {"temperature": True}, TypeError, r"^temperature must be a finite"),
    ("temperature-string", {"temperature": "hot"}, TypeError, r"^temperature must be"),
    ("top-p-zero", {"top_p": 0.0}, ValueError, r"^top_p must be a number in \(0, 1\]"),
    ("top-p-above-one", {"top_p": 1.5}, ValueError, r"^top_p must be a number in \(0, 1\]"),
    ("top-p-nan", {"top_p": math.nan}, ValueError, r"^top_p must be"),
    ("top-k-zero", {"top_k": 0}, ValueError, r"^top_k must be an int >= 1"),
    ("top-k-float", {"top_k": 2.5}, TypeError, r"^top_k must be an int >= 1"),
    ("top-k-bool", {"top_k": True}, TypeError, r"^top_k must be an int"),
    ("max-tokens-zero", {"max_tokens": 0}, ValueError, r"^max_tokens must be an int >= 1"),
    ("max-tokens-inf", {"max_tokens": math.inf}, TypeError, r"^max_tokens must be an int"),
    ("seed-float", {"seed": 1.5}, TypeError, r"^seed must be an int"),
    ("seed-bool", {"seed": False}, TypeError, r"^seed must be an int"),
    ("seed-too-big", {"seed": 2**70}, ValueError, r"^seed must be an int in"),
    ("beams-zero", {"num_beams": 0}, ValueError, r"^num_beams must be an int >= 1"),
    ("beams-float", {"num_beams": 2.0}, TypeError, r"^num_beams must be an int"),
    ("beams-sampled", {"num_beams": 2, "temperature": 0.5}, ValueError,
     r"^num_beams=2 is beam search, which does not sample: temperature must be 0"),
    ("length-penalty-nan", {"length_penalty": math.nan}, ValueError,
     r"^length_penalty must be a number in \[-10, 10\]"),
    ("length-penalty-big", {"length_penalty": 130.0}, ValueError,
     r"^length_penalty must be a number in \[-10, 10\]"),
    ("length-penalty-text", {"length_penalty": "1"}, TypeError,
     r"^length_penalty must be a number in"),
    ("unknown-option", {"temprature": 1.0}, TypeError,
     r"^unknown sampling option\(s\) \['temprature'\]"),
]  # fmt: skip


def _params(table):
    return [pytest.param(*row[1:], id=row[0]) for row in table]


@pytest.mark.parametrize(("call", "error", "pattern"), _params(SEGMENT))
def test_segment_refuses_bad_input(model, files, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(model, files)


@pytest.mark.parametrize(("box", "error", "pattern"), _params(CAPTION))
def test_caption_refuses_bad_box(model, box, error, pattern):
    with pytest.raises(error, match=pattern):
        model.caption(_image(), box, _caption_demos())


@pytest.mark.parametrize(("demos", "error", "pattern"), _params(CAPTION_DEMOS))
def test_caption_refuses_bad_demos(model, demos, error, pattern):
    with pytest.raises(error, match=pattern):
        model.caption(_image(), (0, 0, 5, 5), demos)


@pytest.mark.parametrize(("options", "error", "pattern"), _params(SAMPLING))
def test_sampling_options_are_checked_in_one_place(model, options, error, pattern):
    with pytest.raises(error, match=pattern):
        model.caption(_image(), (0, 0, 5, 5), _caption_demos(), **options)
    with pytest.raises(error, match=pattern):
        model.segment(_image(), _demos(), **options)
    names = ("temperature", "top_k", "top_p", "num_beams", "length_penalty")
    fields = {k: v for k, v in options.items() if k in names}
    if fields:  # the decoder's own Sampling runs the same check
        with pytest.raises(error, match=pattern):
            Sampling(**fields)


# (id, device, CUDA devices the machine pretends to have, exception, pattern)
DEVICES = [
    ("cuda-without-cuda", "cuda", 0, ValueError,
     r"^device: 'cuda' needs CUDA, .*devices here: cpu$"),
    ("cuda-index-out-of-range", "cuda:7", 1, ValueError,
     r"^device: 'cuda:7' does not exist .*cpu, cuda, cuda:0$"),
    ("unknown-device-name", "gpu", 0, ValueError,
     r"^device: 'gpu' is not a device name; devices here: cpu"),
    ("mps-without-mps", "mps", 0, ValueError, r"^device: 'mps' needs Apple's MPS"),
    ("meta-device", "meta", 0, ValueError, r"^device: 'meta' is not supported"),
    ("device-number", 3, 0, TypeError, r"^device: expected a device name"),
]  # fmt: skip


@pytest.mark.parametrize(("device", "cuda", "error", "pattern"), _params(DEVICES))
def test_device_picker(monkeypatch, device, cuda, error, pattern):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(error, match=pattern):
        pick_device(device)
    assert pick_device("cpu") == torch.device("cpu")


DTYPES = [
    ("dtype-int-name", "int8", ValueError,
     r"^dtype: 'int8' is not a parameter dtype; valid: float32, "),
    ("dtype-int-torch", torch.int8, ValueError, r"^dtype: torch.int8 is not a parameter dtype"),
    ("dtype-float8", "float8_e4m3fn", ValueError, r"^dtype: 'float8_e4m3fn' is not a parameter"),
    ("dtype-typo", "bfloat61", ValueError, r"^dtype: 'bfloat61' is not a parameter dtype"),
    ("dtype-number", 16, TypeError, r"^dtype: expected a dtype name"),
]  # fmt: skip


@pytest.mark.parametrize(("dtype", "error", "pattern"), _params(DTYPES))
def test_dtype_picker(dtype, error, pattern):
    with pytest.raises(error, match=pattern):
        pick_dtype(dtype)
    assert pick_dtype("torch.bfloat16") is torch.bfloat16 and pick_dtype(None) is torch.float32


def test_load_names_a_bad_device_and_dtype(model_dir):
    with pytest.raises(ValueError, match=r"^device: 'tpu' is not a device name"):
        unicl.load(model_dir, device="tpu")
    with pytest.raises(ValueError, match=r"^dtype: 'int8' is not a parameter dtype"):
        unicl.load(model_dir, device="cpu", dtype="int8")


def _widgets() -> Registry:
    reg = Registry("widget")
    reg.register("circle")(dict)
    reg.register("star")(list)
    return reg


REGISTRY = [
    ("unknown-name", lambda r: r.get("heart"), ValueError,
     r"^unknown widget 'heart'; valid widget names: circle, star$"),
    ("unknown-name-build", lambda r: r.build("heart"), ValueError,
     r"valid widget names: circle, star"),
    ("name-not-a-string", lambda r: r.get(3), TypeError,
     r"^widget names are strings, got 3; valid"),
    ("duplicate-name", lambda r: r.register("star")(tuple), ValueError,
     r"^widget 'star' is already"),
    ("empty-name", lambda r: r.register(""), ValueError, r"^widget names must be non-empty"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "pattern"), _params(REGISTRY))
def test_registry_errors_are_value_errors(call, error, pattern):
    with pytest.raises(error, match=pattern) as caught:
        call(_widgets())
    assert not isinstance(caught.value, KeyError)
    assert error is not ValueError or isinstance(caught.value, RegistryError)


def test_package_registries_list_their_names():
    from unicl.tasks import TASKS
    from unicl.tokenizers import TOKENIZERS

    with pytest.raises(ValueError, match=r"unknown task 'segmentaton'; .*captioning, segmentation"):
        TASKS.build("segmentaton")
    with pytest.raises(ValueError, match=r"unknown tokenizer 'audio'; .*bins.*gpt2.*vqgan"):
        TOKENIZERS.get("audio")


# --------------------------------------------------------------------------- #
# conversions that must succeed, value by value
# --------------------------------------------------------------------------- #


def _grey16() -> np.ndarray:
    values = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
    values[0, :4] = (0, 128, 129, 65535)  # 128 / 257 rounds down, 129 / 257 up
    return values


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    grey = _grey16()
    expected = np.repeat(np.round(grey / 257.0).astype(np.uint8)[:, :, None], 3, axis=2)
    assert tuple(expected[0, :4, 0]) == (0, 0, 1, 255)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as opened:
        assert opened.mode == "I;16"
        np.testing.assert_array_equal(inputs.to_image(opened, "query"), expected)
        # older Pillow opens 16-bit PNGs as mode "I": the PNG says they are 16-bit
        as_int32 = opened.convert("I")
        as_int32.format = "PNG"
        np.testing.assert_array_equal(inputs.to_image(as_int32, "query"), expected)
    for value in (grey, tmp_path / "grey16.png"):
        np.testing.assert_array_equal(inputs.to_image(value, "query"), expected)
    rgb16 = np.stack([grey, grey[::-1], 65535 - grey], axis=2)
    np.testing.assert_array_equal(
        inputs.to_image(rgb16, "query"), np.round(rgb16 / 257.0).astype(np.uint8)
    )


def test_16_bit_query_gives_the_answer_of_its_8_bit_image(model, tmp_path):
    grey = _grey16()
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    eight = np.round(grey / 257.0).astype(np.uint8)
    demos = _demos()
    np.testing.assert_array_equal(
        model.segment(tmp_path / "grey16.png", demos, category="star"),
        model.segment(eight, demos, category="star"),
    )


def test_other_image_forms_convert_exactly():
    rgb = _image()
    floats = rgb / 255.0
    np.testing.assert_array_equal(inputs.to_image(floats, "query"), rgb)
    np.testing.assert_array_equal(inputs.to_image(floats.astype(np.float32), "query"), rgb)
    opaque = np.concatenate([rgb, np.full((H, W, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(inputs.to_image(opaque, "query"), rgb)
    np.testing.assert_array_equal(inputs.to_image(Image.fromarray(opaque), "query"), rgb)
    bits = _mask()
    np.testing.assert_array_equal(inputs.to_image(bits, "query")[:, :, 1], bits * 255)
    palette = Image.fromarray(rgb).convert("P")
    np.testing.assert_array_equal(inputs.to_image(palette, "query"), palette.convert("RGB"))


def test_binary_masks_convert_exactly(model, tmp_path):
    mask = _mask()
    as_uint8 = mask.astype(np.uint8)
    Image.fromarray(as_uint8).save(tmp_path / "mask01.png")  # an "L" PNG of 0/1 labels
    Image.fromarray(as_uint8 * 255).convert("1").save(tmp_path / "mask1bit.png")
    Image.fromarray(as_uint8 * 255).convert("P").save(tmp_path / "mask_palette.png")
    Image.fromarray(mask.astype(np.uint16) * 65535).save(tmp_path / "mask16.png")
    forms = [
        as_uint8 * 255,
        as_uint8,
        mask.astype(np.int64),
        mask.astype(np.float32),
        np.where(mask, 0.9, 0.1),
        np.repeat(as_uint8[:, :, None] * 255, 3, axis=2),
        tmp_path / "mask01.png",
        tmp_path / "mask1bit.png",
        tmp_path / "mask_palette.png",
        tmp_path / "mask16.png",
    ]
    for value in forms:
        np.testing.assert_array_equal(inputs.to_mask(value, "mask", size=(H, W)), mask)
    answers = [model.segment(_image(), _demos(value), category="star") for value in forms[:2]]
    np.testing.assert_array_equal(answers[0], model.segment(_image(), _demos(), category="star"))
    np.testing.assert_array_equal(answers[0], answers[1])
