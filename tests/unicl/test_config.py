"""Config loading: YAML bases, key=value overrides, and the errors for bad keys and types."""

import dataclasses
from typing import Literal

import pytest

from unicl.config import (
    ConfigError,
    UniclConfig,
    apply_overrides,
    from_dict,
    load_config,
    packaged_configs,
    parse_override,
    save_config,
    to_dict,
)


@dataclasses.dataclass
class Inner:
    width: int = 4
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"
    tags: list[str] = dataclasses.field(default_factory=list)
    limit: int | None = None


@dataclasses.dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = dataclasses.field(default_factory=Inner)
    extra: dict[str, int] = dataclasses.field(default_factory=dict)


def test_from_dict_builds_nested_and_converts_ints_to_floats():
    cfg = from_dict(Outer, {"flag": True, "inner": {"width": 8, "rate": 1, "tags": ["p"]}})
    assert cfg.flag is True and cfg.inner.width == 8 and cfg.inner.tags == ["p"]
    assert isinstance(cfg.inner.rate, float) and cfg.inner.rate == 1.0
    assert cfg.name == "x" and cfg.inner.limit is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"inner": {"widht": 3}},
            r"unknown config key 'inner.widht'; valid keys under 'inner': "
            r"limit, mode, rate, tags, width",
        ),
        ({"nme": "y"}, r"unknown config key 'nme'; valid keys: extra, flag, inner, name"),
        ({"inner": {"width": 2.5}}, r"inner.width: expected int, got 2.5"),
        ({"inner": {"width": True}}, r"inner.width: expected int, got True"),
        ({"flag": "yes"}, r"flag: expected bool"),
        ({"inner": {"mode": "c"}}, r"inner.mode: expected one of \['a', 'b'\], got 'c'"),
        ({"inner": {"tags": "p"}}, r"inner.tags: expected a list"),
        ({"inner": {"tags": [1]}}, r"inner.tags\[0\]: expected str"),
        ({"extra": {"k": "v"}}, r"extra.k: expected int"),
        ({"inner": 3}, r"inner: expected a mapping for Inner"),
        ({"inner": {"limit": "none"}}, r"inner.limit: expected"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_overrides_parse_yaml_scalars():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("lr=3e-4") == (["lr"], 3e-4)
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    assert parse_override("x=null") == (["x"], None)
    assert parse_override("name=hello") == (["name"], "hello")
    assert parse_override("flag=true") == (["flag"], True)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")
    merged = apply_overrides({"a": {"b": 1, "c": 2}}, ["a.b=5", "d=x"])
    assert merged == {"a": {"b": 5, "c": 2}, "d": "x"}


def test_yaml_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nseed: 1\nmodel:\n  n_layer: 2\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\n")
    cfg = load_config(tmp_path / "child.yaml", ["seed=7"])
    assert isinstance(cfg, UniclConfig)
    assert (cfg.name, cfg.seed, cfg.model.n_layer) == ("child", 7, 2)


def test_yaml_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found; give a YAML path or one of the packaged"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        load_config(None, ["modle.n_layer=3"])
    with pytest.raises(ConfigError, match="unknown config key 'model.nlayer'"):
        load_config(None, ["model.nlayer=3"])


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["seed=3", "name=rt"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize("name", ["shapes_tiny", "m2oegpt_coco"])
def test_packaged_configs_load_by_name(name):
    assert name in packaged_configs()
    cfg = load_config(name)
    assert isinstance(cfg, UniclConfig)
    assert to_dict(load_config(f"{name}.yaml")) == to_dict(cfg)


def test_fixed_length_tuples():
    @dataclasses.dataclass
    class Betas:
        betas: tuple[float, float] = (0.9, 0.999)
        sizes: tuple[int, ...] = ()

    cfg = from_dict(Betas, {"betas": [0.8, 1], "sizes": [1, 2, 3]})
    assert cfg.betas == (0.8, 1.0) and cfg.sizes == (1, 2, 3)
    with pytest.raises(ConfigError, match=r"betas: expected 2 items, got 3"):
        from_dict(Betas, {"betas": [0.1, 0.2, 0.3]})
    with pytest.raises(ConfigError, match=r"sizes\[1\]: expected int"):
        from_dict(Betas, {"sizes": [1, "x"]})


def test_parallel_mask_answers_need_the_attribute_embedding():
    from unicl.config import load_config

    with pytest.raises(ConfigError, match="mask_decoding=parallel needs model.attribute_embedding"):
        load_config("shapes_tiny", ["model.attribute_embedding=false"])
    cfg = load_config("shapes_tiny", ["tasks.segmentation.mask_decoding=autoregressive"])
    assert cfg.model.attribute_embedding  # the default turns it on for its parallel answers


def test_run_names_are_plain_folder_names():
    # the learning benchmark names its runs after variants such as "all+code-features"
    assert load_config(None, ["name=all+code-features-700"]).name == "all+code-features-700"
    for bad in ("a/b", "../up", ".hidden", ""):
        with pytest.raises(ConfigError, match="plain folder name"):
            load_config(None, [f"name={bad}"])
