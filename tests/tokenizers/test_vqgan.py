"""The "vqgan" tokenizer: taming parity, export round trip, input rules, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2

from unicl.tokenizers import build_tokenizer, load_tokenizer
from unicl.tokenizers.vqgan import VQGANTokenizer
from unicl.tokenizers.vqgan_model import VQGANConfig

# a small taming architecture: 24 px, f4 -> 6x6 codes, attention at 12 px
DDCONFIG = {
    "double_z": False, "z_channels": 8, "resolution": 24, "in_channels": 3, "out_ch": 3,
    "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [12], "dropout": 0.0,
}  # fmt: skip
N_EMBED, EMBED_DIM = 96, 6


class TamingReference(torch.nn.Module):
    """taming's VQModel pieces, assembled here exactly as taming's VQModel does."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder(**DDCONFIG)
        self.decoder = Decoder(**DDCONFIG)
        self.quantize = VectorQuantizer2(N_EMBED, EMBED_DIM, beta=0.25)
        self.quant_conv = torch.nn.Conv2d(DDCONFIG["z_channels"], EMBED_DIM, 1)
        self.post_quant_conv = torch.nn.Conv2d(EMBED_DIM, DDCONFIG["z_channels"], 1)

    def codes(self, x):
        _, _, (_, _, idx) = self.quantize(self.quant_conv(self.encoder(x)))
        return idx.reshape(x.shape[0], -1)

    def decode_codes(self, idx, h, w):
        z_q = self.quantize.embedding(idx).reshape(idx.shape[0], h, w, -1).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z_q))


@pytest.fixture(scope="module")
def taming_files(tmp_path_factory):
    torch.manual_seed(0)
    ref = TamingReference().eval()
    with torch.no_grad():  # a spread-out codebook, so that many different codes occur
        ref.quantize.embedding.weight.normal_(0, 0.5)
    root = tmp_path_factory.mktemp("taming")
    state = dict(ref.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)  # taming keeps its loss
    torch.save({"state_dict": state, "global_step": 123}, root / "last.ckpt")
    config = {
        "model": {
            "base_learning_rate": 4.5e-6,
            "target": "taming.models.vqgan.VQModel",
            "params": {"embed_dim": EMBED_DIM, "n_embed": N_EMBED, "ddconfig": DDCONFIG},
        }
    }
    (root / "model.yaml").write_text(yaml.safe_dump(config))
    return ref, root / "last.ckpt", root / "model.yaml"


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    base[:, 6:18, 6:18] = [250, 30, 30]  # some structure besides noise
    return base


def test_taming_checkpoint_codes_match_taming(taming_files, images):
    ref, ckpt, config = taming_files
    tok = VQGANTokenizer.from_taming(ckpt, config)
    assert tok.vocab_size == N_EMBED and tok.codes_per_image == 36
    codes = tok.encode(images)
    assert codes.dtype == torch.int64 and codes.shape == (5, 36)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        expected = ref.codes(x)
        expected_images = ref.decode_codes(expected, 6, 6)
    assert torch.equal(codes, expected)
    assert len(set(codes.flatten().tolist())) > 10
    decoded = tok.decode(codes)
    want = ((expected_images.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).byte().numpy()
    assert decoded.dtype == np.uint8 and decoded.shape == (5, 24, 24, 3)
    assert np.abs(decoded.astype(int) - want.astype(int)).max() <= 1


def test_export_round_trip(taming_files, images, tmp_path):
    _, ckpt, config = taming_files
    tok = VQGANTokenizer.from_taming(ckpt, config)
    saved = tok.save(tmp_path / "tok")
    assert (saved / "vqgan.safetensors").is_file() and (saved / "vqgan.json").is_file()
    again = load_tokenizer(saved)
    assert torch.equal(again.encode(images), tok.encode(images))
    by_path = build_tokenizer({"name": "vqgan", "checkpoint": str(saved / "vqgan.safetensors")})
    assert torch.equal(by_path.encode(images[0]), tok.encode(images[0]))


def test_input_forms_and_resize_rule(taming_files, images):
    _, ckpt, config = taming_files
    tok = VQGANTokenizer.from_taming(ckpt, config, batch_size=2)  # several chunks
    batch = tok.encode(images)
    single = tok.encode(images[1])
    assert single.shape == (36,) and torch.equal(single, batch[1])
    assert torch.equal(tok.encode(Image.fromarray(images[2])), batch[2])
    assert torch.equal(tok.encode([images[0], Image.fromarray(images[3])]), batch[[0, 3]])
    assert torch.equal(tok.encode(torch.from_numpy(images)), batch)
    assert [t.tolist() for t in tok.encode_batch(list(images))] == batch.tolist()
    # other sizes are resized (bicubic, no crop) to resolution x resolution
    big = np.asarray(Image.fromarray(images[4]).resize((40, 56), Image.BICUBIC))  # (56, 40, 3)
    manual = np.asarray(Image.fromarray(big).resize((24, 24), Image.BICUBIC))
    assert torch.equal(tok.encode(big), tok.encode(manual))
    assert tok.decode(batch[0], size=(56, 40)).shape == (56, 40, 3)
    assert len(tok.decode_batch(list(batch[:2]))) == 2


def test_masks_round_trip_shapes(taming_files):
    _, ckpt, config = taming_files
    tok = VQGANTokenizer.from_taming(ckpt, config)
    mask = np.zeros((30, 50), bool)
    mask[5:25, 10:40] = True
    codes = tok.encode_mask(mask)
    assert codes.shape == (36,)
    # uint8 0/255 and bool masks are the same mask
    assert torch.equal(tok.encode_mask(mask.astype(np.uint8) * 255), codes)
    assert tok.encode_mask([mask, ~mask]).shape == (2, 36)
    assert tok.encode_mask(np.stack([mask, mask])).shape == (2, 36)
    out = tok.decode_mask(codes)
    assert out.dtype == bool and out.shape == (24, 24)
    assert tok.decode_mask(codes, size=(30, 50)).shape == (30, 50)
    assert tok.decode_mask(torch.stack([codes, codes])).shape == (2, 24, 24)


def test_bad_input(taming_files, images, tmp_path):
    _, ckpt, config = taming_files
    tok = VQGANTokenizer.from_taming(ckpt, config)
    with pytest.raises(TypeError, match="uint8"):
        tok.encode(images[0].astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        tok.encode(images[0, :, :, 0])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        tok.encode(np.zeros((24, 24, 4), np.uint8))
    with pytest.raises(ValueError, match="mode 'L'"):
        tok.encode(Image.fromarray(images[0]).convert("L"))
    with pytest.raises(ValueError, match="empty"):
        tok.encode([])
    with pytest.raises(TypeError, match="PIL image"):
        tok.encode("image.png")
    with pytest.raises(ValueError, match="36 codes per image"):
        tok.decode(torch.zeros(35, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside the tokenizer's range \[0, 96\)"):
        tok.decode(torch.full((36,), 96))
    with pytest.raises(ValueError, match="0/1"):
        tok.encode_mask(np.eye(24, dtype=np.uint8))
    with pytest.raises(TypeError, match="bool or uint8"):
        tok.encode_mask(np.eye(24, dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        tok.encode_mask(np.zeros((2, 2, 2, 2), bool))


def test_checkpoint_that_does_not_fit_the_config(taming_files, tmp_path):
    _, ckpt, config = taming_files
    other = yaml.safe_load(config.read_text())
    other["model"]["params"]["n_embed"] = 128
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(ValueError, match=r"quantize.embedding.weight: checkpoint \(96, 6\)"):
        VQGANTokenizer.from_taming(ckpt, tmp_path / "other.yaml")
    with pytest.raises(ValueError, match="together"):
        VQGANTokenizer(taming_ckpt=str(ckpt))
    with pytest.raises(FileNotFoundError):
        VQGANTokenizer.from_taming(tmp_path / "missing.ckpt", config)
    with pytest.raises(FileNotFoundError, match="no built-in VQ-GAN 'nope'"):
        VQGANTokenizer(checkpoint="builtin:nope")
    with pytest.raises(ValueError, match="unknown keys"):
        VQGANTokenizer(checkpoint=None, config={"channels": 3})
    with pytest.raises(ValueError, match="multiple of 32"):
        VQGANConfig(ch=16)
    with pytest.raises(ValueError, match="equal ch_mult"):
        VQGANConfig(ch_mult=(1, 2, 2, 2), num_res_blocks=0)
    with pytest.raises(ValueError, match="not divisible"):
        VQGANConfig(resolution=60)
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="missing keys"):
        VQGANTokenizer.from_taming(tmp_path / "bad.ckpt", config)


def test_configs():
    paper = VQGANConfig.paper()
    assert (paper.resolution, paper.factor, paper.n_embed, paper.n_codes) == (256, 16, 1024, 256)
    tiny = VQGANConfig()
    assert (tiny.resolution, tiny.factor, tiny.n_codes, tiny.n_embed) == (64, 8, 64, 1024)
    assert (
        VQGANConfig.from_taming(
            {"params": {"embed_dim": 4, "n_embed": 8, "ddconfig": DDCONFIG}}
        ).grid
        == 6
    )


def test_builtin_tiny_quantizer():
    # the default checkpoint: the shipped quantizer trained on the shapes world
    tok = build_tokenizer({"name": "vqgan"})
    assert (tok.vocab_size, tok.codes_per_image, tok.config.resolution) == (1024, 64, 64)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 34) ** 2 < 18**2
    square = (abs(yy - 32) < 20) & (abs(xx - 28) < 14)
    back = tok.decode_mask(tok.encode_mask([disc, square]))
    for mask, out in zip([disc, square], back):
        iou = (mask & out).sum() / (mask | out).sum()
        assert iou > 0.8, iou
    assert tok.decode(tok.encode(np.zeros((64, 64, 3), np.uint8))).shape == (64, 64, 3)
