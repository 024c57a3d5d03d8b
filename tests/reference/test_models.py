import pytest
import torch
from torch import nn

from hessnb.reference import models


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("bn", [True, False])
def test_resnet32_has_32_weight_layers_and_bn_only_when_asked(bn):
    model = models.resnet32(bn=bn, width=4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 32  # 1 stem + 3 stages x 5 blocks x 2 + 1 classifier
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == bn
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_resnet32_full_width_matches_the_paper_size():
    # He et al. (2016) report 0.46M parameters for ResNet-32 on CIFAR-10.
    assert 0.45e6 < count(models.resnet32(bn=True)) < 0.48e6


def test_small_models_shapes():
    assert models.mlp(hidden=(8,))(torch.randn(3, 64)).shape == (3, 10)
    cnn = models.small_cnn(bn=True)
    assert cnn(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())


def test_build_by_name():
    assert isinstance(models.build("resnet32", bn=False, width=4), models.CifarResNet)
    assert count(models.build("resnet18")) == 11_689_512
    own = models.build("torch.nn:Linear", in_features=2, out_features=3)
    assert isinstance(own, nn.Linear) and own.out_features == 3
    with pytest.raises(ValueError, match="unknown model"):
        models.build("resnet33")
    with pytest.raises(ValueError, match="cannot load model factory"):
        models.build("torch.nn:NoSuchNet")
    with pytest.raises(TypeError, match=r"not an nn\.Module"):
        models.build("builtins:dict", width=4)
