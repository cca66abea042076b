import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scenes import have_fashion, make_scene_set  # noqa: E402

CLASSES = ("trouser", "sneaker", "bag")


@pytest.fixture(scope="session")
def scene_set(tmp_path_factory):
    """A small VOC-format scene set (train 12 / test 8 images) with .npy proposals."""
    if not have_fashion():
        pytest.skip("Fashion-MNIST not found at /usr/share/datasets/fashion-mnist")
    root = str(tmp_path_factory.mktemp("scenes"))
    make_scene_set(root, n_train=12, n_test=8, seed=3)
    return root
