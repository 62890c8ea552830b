"""The registry: registration, building, and its errors."""

import pytest

from unicl.registry import Registry, RegistryError


@pytest.fixture
def reg():
    return Registry("widget", contract="A widget takes keyword options.")


def test_register_build_and_names(reg):
    @reg.register("b")
    class B:
        def __init__(self, size: int = 1):
            self.size = size

    @reg.register("a")
    def make_a(colour="red"):
        return ("a", colour)

    assert reg.names() == ["a", "b"]
    assert "b" in reg and "c" not in reg
    assert len(reg) == 2 and list(reg) == ["a", "b"]
    assert reg.build("b", size=3).size == 3
    assert reg.build("a", colour="blue") == ("a", "blue")
    assert reg.get("b") is B


def test_unknown_name_lists_valid_names(reg):
    reg.register("circle")(object)
    reg.register("star")(dict)
    expected = r"unknown widget 'heart'; valid widget names: circle, star"
    with pytest.raises(RegistryError, match=expected):
        reg.get("heart")
    with pytest.raises(ValueError, match=expected) as caught:  # a bad value, not a lookup bug
        reg.build("heart")
    assert not isinstance(caught.value, KeyError)


def test_duplicate_name_is_an_error(reg):
    class First:
        pass

    class Second:
        pass

    reg.register("x")(First)
    reg.register("x")(First)  # re-registering the same object (module re-import) is fine
    with pytest.raises(RegistryError, match="already registered.*First"):
        reg.register("x")(Second)


def test_unknown_option_is_named(reg):
    @reg.register("w")
    class W:
        def __init__(self, size: int = 1, *, depth: int = 2):
            pass

    expected = r"unknown option\(s\) \['colour'\]; valid options: size, depth"
    with pytest.raises(TypeError, match=expected):
        reg.build("w", colour="red")


def test_bad_names(reg):
    with pytest.raises(RegistryError):
        reg.register("")
    with pytest.raises(TypeError, match="widget names must be strings"):
        reg.register(3)


def test_package_registries_exist():
    from unicl.tasks import TASKS
    from unicl.tokenizers import TOKENIZERS

    assert TOKENIZERS.kind == "tokenizer" and "plugin" in TOKENIZERS.contract
    assert TASKS.kind == "task" and "plugin" in TASKS.contract
