"""Networks build from plain keyword arguments, in 2D and 3D, and load local weights only."""

from __future__ import annotations

import pytest
import torch

from lilaw_med.networks import NETWORKS, build_network


@pytest.mark.parametrize("name", NETWORKS)
def test_every_network_maps_a_2d_batch_to_logits(name: str) -> None:
    net = build_network(name, spatial_dims=2, in_channels=3, num_classes=5).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_3d_networks_map_a_volume_batch_to_logits(name: str) -> None:
    net = build_network(name, spatial_dims=3, in_channels=1, num_classes=1).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 16, 16, 16)).shape == (2, 1)


def test_pretrained_loads_a_local_file_and_skips_a_different_head(tmp_path) -> None:
    src = build_network("small_cnn", 2, 1, 5)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": src.state_dict()}, path)
    dst = build_network("small_cnn", 2, 1, 2, pretrained=True, weights=path)
    first = next(k for k in src.state_dict() if k.startswith("features"))
    assert torch.equal(dst.state_dict()[first], src.state_dict()[first])
    assert dst.classifier.weight.shape == (2, 64)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_network("resnet18", 2, 1, 2, pretrained=True, weights=tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="network must be one of"):
        build_network("vgg", 2, 1, 2)
