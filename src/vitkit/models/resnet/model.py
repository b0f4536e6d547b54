"""A CIFAR-style ResNet: a 3x3 stem at full resolution, then stages of BasicBlocks (two 3x3 conv + BatchNorm,
identity shortcut; a strided 1x1 conv + BatchNorm shortcut where the stage halves the map), global average
pooling and a linear classifier. The last BatchNorm of each block starts at zero, so every block starts as
an identity (Goyal et al. 2017).

Layout: `stem` (conv, bn, act), `stages.i.blocks.j`, `norm_pre` (identity: kept for the staged model API),
`head` (`global_pool`, `fc`).
"""

from dataclasses import dataclass

import torch
from torch import nn

from ...layers import DropPath
from .._features import ConvStagesMixin, adapt_stem_channels, forward_blocks
from .._protocol import FeatureInfo, InputSpec, with_pretrained_cfg

POOL_TYPES = ("avg", "max", "")


@dataclass
class ResNetConfig:
    """Constructor arguments. `img_size` is the size the model is built for and evaluated at; any size
    divisible by the total stride (2 ** (stages - 1)) works."""

    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = "avg"
    img_size: int = 32
    stem_width: int = 16
    depths: tuple[int, ...] = (3, 3, 3)
    dims: tuple[int, ...] = (16, 32, 64)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        self.depths, self.dims = tuple(int(d) for d in self.depths), tuple(int(d) for d in self.dims)
        if not self.depths or len(self.depths) != len(self.dims):
            raise ValueError(f"depths {self.depths} and dims {self.dims} must have one entry per stage")
        if any(d < 1 for d in self.depths + self.dims):
            raise ValueError("depths and dims must be positive")
        for name in ("in_chans", "img_size", "stem_width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.global_pool not in POOL_TYPES:
            raise ValueError(f"global_pool={self.global_pool!r} is not one of {POOL_TYPES}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


def _conv_bn(in_chs: int, out_chs: int, kernel: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_chs)


class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_path: float):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_chs, out_chs, 3, stride)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(out_chs, out_chs, 3, 1)
        self.downsample = nn.Sequential(*_conv_bn(in_chs, out_chs, 1, stride)) \
            if stride > 1 or in_chs != out_chs else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(self.drop_path(y) + self.downsample(x))


class ResNetStage(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_blocks(self, x)


class ClassifierHead(nn.Module):
    """Global pooling, flatten, dropout, linear (no pooling with global_pool='': the map is returned)."""

    def __init__(self, dim: int, num_classes: int, pool_type: str, drop_rate: float):
        super().__init__()
        self.dim, self.drop = dim, nn.Dropout(drop_rate)
        self.reset(num_classes, pool_type)

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type is not None:
            if pool_type not in POOL_TYPES:
                raise ValueError(f"global_pool={pool_type!r} is not one of {POOL_TYPES}")
            self.pool_type = pool_type
        self.fc = nn.Linear(self.dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "avg":
            x = x.mean((2, 3))
        elif self.pool_type == "max":
            x = x.amax((2, 3))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class ResNet(ConvStagesMixin, nn.Module):
    """forward_features / forward_head / forward_intermediates, pruning, head reset and gradient checkpointing
    come from `ConvStagesMixin`."""

    architecture = "resnet"

    def __init__(self, config: ResNetConfig):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        conv, bn = _conv_bn(c.in_chans, c.stem_width, 3, 1)
        self.stem = nn.Sequential()
        self.stem.add_module("conv", conv)
        self.stem.add_module("bn", bn)
        self.stem.add_module("act", nn.ReLU(inplace=True))
        # drop path rate grows linearly with depth (on the CPU: models may be built on the meta device)
        rates = torch.linspace(0, c.drop_path_rate, sum(c.depths), device="cpu").split(list(c.depths))
        stages, self.feature_info, prev = [], [], c.stem_width
        for i, (depth, dim) in enumerate(zip(c.depths, c.dims, strict=True)):
            stride = 2 if i > 0 else 1
            blocks = [BasicBlock(prev if j == 0 else dim, dim, stride if j == 0 else 1, float(rates[i][j]))
                      for j in range(depth)]
            stages.append(ResNetStage(blocks))
            self.feature_info.append(FeatureInfo(dim, 2**i, f"stages.{i}"))
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.norm_pre = nn.Identity()
        self.head = ClassifierHead(prev, c.num_classes, c.global_pool, c.drop_rate)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """He (fan-out) init for convs, BatchNorm at 1/0 with each block's last BatchNorm at 0, zero head bias."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)
        if isinstance(self.head.fc, nn.Linear):
            nn.init.zeros_(self.head.fc.bias)

    @property
    def input_spec(self) -> InputSpec:
        size = self.config.img_size
        spec = InputSpec(in_chans=self.config.in_chans, img_size=(size, size), fixed_size=False,
                         size_multiple=self.feature_info[-1].reduction, crop_pct=1.0, interpolation="bilinear")
        return with_pretrained_cfg(spec, self)

    # ----- timm's model API ------------------------------------------------------------------
    def _reset_head(self, num_classes: int, global_pool: str | None) -> None:
        self.head.reset(num_classes, global_pool)  # refuses an unknown pool before anything changes

    def no_weight_decay(self) -> set[str]:
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^stem", "blocks": r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^norm_pre", (99999,)),
        ]}

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Stem weights made for another channel count refitted (gray: summed), as timm does for `in_chans`."""
        state_dict = dict(state_dict)
        adapt_stem_channels(state_dict, "stem.conv.weight", self.stem.conv.weight)
        return state_dict
