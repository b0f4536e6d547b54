"""A CIFAR-style ResNet (He et al. 2016, section 4.2): the plain CNN reference for small images, registered as
architecture "resnet". model.py the network and its config; the named models are below."""

from ..registry import Family, register_family, register_model
from .model import ResNet, ResNetConfig

register_family(Family(
    name="resnet", config_cls=ResNetConfig, model_cls=ResNet,
    config_limits={"img_size": (1, 8192), "stem_width": (1, 16384), "depths": (1, 512), "dims": (1, 16384)},
))

# CIFAR ResNet-20 (3 stages of 3 BasicBlocks, widths 16/32/64) and its 2x-wide variant, at 28x28 and 32x32
for size in (28, 32):
    register_model(f"resnet20_{size}", "resnet", img_size=size, stem_width=16, depths=(3, 3, 3), dims=(16, 32, 64))
    register_model(f"resnet20_w2_{size}", "resnet", img_size=size, stem_width=32, depths=(3, 3, 3),
                   dims=(32, 64, 128))

__all__ = ["ResNet", "ResNetConfig"]
