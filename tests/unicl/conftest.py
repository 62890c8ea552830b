"""Fixtures of the unicl package tests: a tiny random exported model and the loaded model."""

import pytest

import unicl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, make_tiny_export):
    return make_tiny_export(tmp_path_factory.mktemp("export") / "tiny")


@pytest.fixture(scope="module")
def model(model_dir):
    return unicl.load(model_dir, device="cpu")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, make_tiny_export):
    return make_tiny_export(tmp_path_factory.mktemp("bad-files") / "export")
