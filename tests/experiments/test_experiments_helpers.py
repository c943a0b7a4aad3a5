"""The helpers every experiment shares: device resolution, test tensors, figure saving."""

import stat

import pytest
import torch

from experiments.cli import UsageError, resolve_device
from experiments.figures import pyplot, save_figure
from nets.datasets.dataset import ImageDataset


def test_resolve_device_reads_auto_and_names_a_bad_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(UsageError, match="--device 'gpu0' is not a device"):
        resolve_device("gpu0")


def test_tensors_are_the_images_over_255_and_the_labels_of_a_slice():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 1, 2, 2), dtype=torch.uint8, generator=generator)
    data = ImageDataset(images, torch.arange(5), classes=tuple("abcde"))
    x, y = data.tensors(1, 3)
    assert x.dtype == torch.float32 and torch.equal(x * 255, images[1:4].float())
    assert torch.equal(y, torch.tensor([1, 2, 3]))
    assert data.tensors(3, 100)[1].tolist() == [3, 4]  # clipped at the end
    assert data.tensors()[0].shape[0] == 5
    with pytest.raises(ValueError, match="start and count must be >= 0"):
        data.tensors(-1, 2)


def test_save_figure_writes_a_png_atomically_with_mode_0644_and_closes_it(tmp_path):
    plt = pyplot()
    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0])
    path = save_figure(figure, tmp_path / "sub" / "figure.png", note="made from nothing")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(path.stat().st_mode) & 0o644 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["figure.png"]
    assert not plt.fignum_exists(figure.number)
