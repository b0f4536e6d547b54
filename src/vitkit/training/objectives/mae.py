"""Masked autoencoders (He et al., 2022): hide a random 75% of the patches, encode the visible ones with the
backbone, reconstruct every patch with a light transformer decoder, and score the hidden ones only.

The backbone is any token-sequence model (`models/_masking.py`); the decoder and the loss live here, so the
loop stays the trainer's. `best/` and `final/` hold the backbone alone: `vitkit.load` gives the encoder,
and `vitkit train --init-checkpoint` fine-tunes it."""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...data.augment import normalize, random_hflip, random_resized_crop, to_unit_float
from ...layers import Block
from ...models._masking import embed_kept, random_keep, require_token_sequence
from .base import Objective, objective_options
from .features import FeatureMonitor, collapse_reason


@dataclass
class MAEConfig:
    """`objective_args` of `objective: mae` (MAE's names)."""

    mask_ratio: float = 0.75
    norm_pix_loss: bool = True  # targets normalised per patch (mean 0, std 1): sharper features
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    min_scale: float = 0.2  # random resized crop scale range [min_scale, 1]
    knn_bank: int = 5000  # labelled training images the kNN monitor compares with
    knn_k: int = 20
    knn_temperature: float = 0.07

    def __post_init__(self):
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mae mask_ratio must be in (0, 1) (the fraction of patches hidden), "
                             f"got {self.mask_ratio}")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"mae min_scale must be in (0, 1], got {self.min_scale}")
        for name in ("decoder_dim", "decoder_depth", "decoder_heads", "knn_bank", "knn_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"mae {name} must be >= 1, got {getattr(self, name)}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"mae decoder_dim {self.decoder_dim} is not divisible by decoder_heads "
                             f"{self.decoder_heads}")


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) fixed 2-D sine-cosine position embedding (MAE's decoder): half the channels encode
    the row, half the column, each at dim/4 frequencies."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for coord in (rows.flatten(), cols.flatten()):
        angles = coord[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


class MAEDecoder(nn.Module):
    """Visible tokens (and the encoder's prefix tokens) in, one pixel patch per position out."""

    def __init__(self, encoder_dim: int, num_prefix: int, grid: int, patch_pixels: int, cfg: MAEConfig):
        super().__init__()
        self.num_prefix, self.grid = num_prefix, grid
        # the encoder's tokens normalised here: a backbone that pools before its final norm (avg pooling
        # with fc_norm, as timm builds it) hands over un-normalised tokens
        self.encoder_norm = nn.LayerNorm(encoder_dim, eps=1e-6)
        self.embed = nn.Linear(encoder_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        pos = torch.cat([torch.zeros(num_prefix, cfg.decoder_dim), sincos_pos_embed(cfg.decoder_dim, grid)])
        self.register_buffer("pos_embed", pos.unsqueeze(0))
        self.blocks = nn.Sequential(*[Block(cfg.decoder_dim, cfg.decoder_heads) for _ in range(cfg.decoder_depth)])
        self.norm = nn.LayerNorm(cfg.decoder_dim, eps=1e-6)
        self.pred = nn.Linear(cfg.decoder_dim, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.encoder_norm(tokens))
        batch, prefix, num_patches = x.shape[0], self.num_prefix, self.grid * self.grid
        full = self.mask_token.expand(batch, num_patches, -1).to(x.dtype).clone()
        full.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x[:, prefix:])
        x = torch.cat([x[:, :prefix], full], dim=1) + self.pos_embed.to(x.dtype)
        x = self.norm(self.blocks(x))
        return self.pred(x[:, prefix:])  # (B, N, patch_pixels)


class MAEModule(nn.Module):
    """The backbone and its decoder: what the trainer optimises, checkpoints and wraps in DDP."""

    def __init__(self, backbone: nn.Module, decoder: MAEDecoder):
        super().__init__()
        self.backbone, self.decoder = backbone, decoder

    def forward(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_tokens(embed_kept(self.backbone, images, keep))
        return self.decoder(tokens, keep)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch*patch*C), patches in row-major order (MAE's layout)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    b, n, _ = patches.shape
    grid = math.isqrt(n)
    x = patches.reshape(b, grid, grid, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, grid * patch, grid * patch)


class MAE(Objective):
    name = "mae"
    selection_metric = "knn_top1"
    find_unused_parameters = True  # the backbone's pooling and head run in evaluation only

    def __init__(self, cfg: MAEConfig, bank_set, num_classes: int, seed: int = 0):
        self.cfg, self.bank_set, self.num_classes, self.seed = cfg, bank_set, num_classes, seed
        self.patch = self.grid = None

    def setup(self, augment):
        super().setup(augment)
        self.img_size, self.mean, self.std = augment.img_size, augment.mean, augment.std
        self.monitor = FeatureMonitor(self.bank_set, self.eval_tf, self.num_classes, self.cfg.knn_bank,
                                      self.cfg.knn_k, self.cfg.knn_temperature, self.seed)

    def model_kwargs(self) -> dict:
        return {"global_pool": "avg"}  # MAE's features are the mean patch token (its fine-tuning default too)

    def build(self, backbone: nn.Module) -> nn.Module:
        require_token_sequence(backbone, "MAE")
        spec = backbone.input_spec
        reduction = backbone.feature_info[0].reduction
        if spec.img_size[0] % reduction or spec.img_size[0] != spec.img_size[1]:
            raise ValueError(f"MAE reconstructs square patches of {reduction}x{reduction} pixels; the input size "
                             f"{spec.img_size} is not a multiple of it")
        self.patch, self.grid = reduction, spec.img_size[0] // reduction
        decoder = MAEDecoder(backbone.num_features, backbone.num_prefix_tokens, self.grid,
                             reduction * reduction * spec.in_chans, self.cfg)
        return MAEModule(backbone, decoder)

    def backbone(self, module: nn.Module) -> nn.Module:
        return module.backbone

    def views(self, images, targets, generator):
        x = random_resized_crop(to_unit_float(images), self.img_size, (self.cfg.min_scale, 1.0), (3 / 4, 4 / 3),
                                generator=generator)
        x = normalize(random_hflip(x, 0.5, generator=generator), self.mean, self.std)
        num_patches = self.grid * self.grid
        keep = max(1, round(num_patches * (1 - self.cfg.mask_ratio)))
        kept, mask = random_keep(len(x), num_patches, keep, generator)
        return x, kept, mask

    def reconstruction_loss(self, pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = patchify(images, self.patch).float()
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def loss(self, module, views):
        images, kept, mask = views
        return {"loss": self.reconstruction_loss(module(images, kept), images, mask)}

    def evaluate(self, model, dataset, split):
        return self.monitor.evaluate(model, dataset)

    def collapsed(self, metrics):
        return collapse_reason(metrics)

    def visualize(self, module, dataset, out_dir, epoch):
        self.reconstruction_png(module, dataset, Path(out_dir) / "reconstructions" / f"epoch_{epoch:04d}.png")

    @torch.no_grad()
    def reconstruction_png(self, module: nn.Module, dataset, path: Path, count: int = 8) -> Path:
        """A PNG of `count` images: original / masked / reconstruction rows (visible patches pasted back),
        with a fixed mask so that epochs compare."""
        from PIL import Image

        images = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])
        x = self.eval_tf(images).to(next(module.parameters()).device)
        kept, mask = random_keep(len(x), self.grid * self.grid,
                                 max(1, round(self.grid ** 2 * (1 - self.cfg.mask_ratio))),
                                 torch.Generator().manual_seed(0))
        module.eval()
        pred = module(x, kept.to(x.device)).float()
        target = patchify(x, self.patch).float()
        if self.cfg.norm_pix_loss:  # show the prediction in pixel units: undo the per-patch normalisation
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        shown = mask.to(x.device).unsqueeze(-1)
        masked = unpatchify(target * ~shown, self.patch, x.shape[1])
        recon = unpatchify(torch.where(shown, pred, target), self.patch, x.shape[1])
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        rows = [torch.cat(list((t * std + mean).clamp(0, 1)), dim=-1) for t in (x, masked, recon)]
        grid = (torch.cat(rows, dim=-2) * 255).round().to(torch.uint8).cpu()
        scale = max(1, 64 // self.img_size)  # small images (8x8 digits) blown up to be seen
        grid = grid.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
        array = grid.permute(1, 2, 0).squeeze(-1).numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(array).save(tmp, format="PNG")
        tmp.replace(path)
        return path


def mae_config(args: dict) -> MAEConfig:
    return objective_options(MAEConfig, args, "mae")
