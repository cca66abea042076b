"""The scene-set fixture shared by the detection tests (imported by each module; no conftest here, as
a second ``conftest`` module would shadow tests/conftest.py for ``from conftest import ...``)."""
from __future__ import annotations

import pytest

from scenes import have_fashion, make_scene_set

CLASSES = ("trouser", "sneaker", "bag")


@pytest.fixture(scope="session")
def scene_set(tmp_path_factory):
    """A small VOC-format scene set (train 12 / test 8 images) with .npy proposals."""
    if not have_fashion():
        pytest.skip("Fashion-MNIST not found at /usr/share/datasets/fashion-mnist")
    root = str(tmp_path_factory.mktemp("scenes"))
    make_scene_set(root, n_train=12, n_test=8, seed=3)
    return root
