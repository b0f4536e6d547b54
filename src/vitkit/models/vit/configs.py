"""Named ViT / DeiT configs. ImageNet sizes match timm; small-image ones are vitkit's own."""

from .._protocol import IMAGENET_MEAN, IMAGENET_STD
from ..registry import register_model

# timm's pretrained cfgs for these names' weights (normalisation and eval crop; all bicubic)
INCEPTION = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9)  # augreg ViTs
DEIT = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875)
DINOV2 = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=1.0)
OPENAI_CLIP = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711), crop_pct=1.0)
SIGLIP = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0)

# name -> (embed_dim, depth, num_heads)
IMAGENET_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
for size, (dim, depth, heads) in IMAGENET_SIZES.items():
    shape = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=16, img_size=224)
    register_model(f"vit_{size}_patch16_224", "vit", **shape, pretrained_cfg=INCEPTION)
    register_model(f"vit_{size}_patch16_reg4_gap_224", "vit", **shape, reg_tokens=4, class_token=False,
                   global_pool="avg", no_embed_class=True, pretrained_cfg=INCEPTION)
    if size != "large":
        register_model(f"deit_{size}_patch16_224", "vit", **shape, pretrained_cfg=DEIT)
        register_model(f"deit_{size}_distilled_patch16_224", "vit", **shape, distilled=True, pretrained_cfg=DEIT)

# Small images: 28x28 gray (MNIST family) and 32x32 RGB (CIFAR), 10 classes, patch 4 (7x7 / 8x8 grids),
# and 8x8 gray (scikit-learn digits) with patch 2. `convstem` models replace the patch projection with
# three stride-2 3x3 convolutions (28 -> 4x4 grid, 32 -> 4x4): 16 tokens that see local structure.
SMALL_SIZES = {"pico": (64, 4, 2), "nano": (128, 6, 4), "micro": (192, 8, 3), "tiny": (192, 12, 3)}
for size, (dim, depth, heads) in SMALL_SIZES.items():
    shape = dict(embed_dim=dim, depth=depth, num_heads=heads, num_classes=10)
    register_model(f"vit_{size}_patch4_28", "vit", **shape, patch_size=4, img_size=28, in_chans=1)
    register_model(f"vit_{size}_patch4_32", "vit", **shape, patch_size=4, img_size=32, in_chans=3)
    register_model(f"deit_{size}_distilled_patch4_32", "vit", **shape, patch_size=4, img_size=32, distilled=True)
    register_model(f"vit_{size}_convstem_28", "vit", **shape, conv_stem=(32, 64, 128), img_size=28, in_chans=1)
    register_model(f"vit_{size}_convstem_32", "vit", **shape, conv_stem=(32, 64, 128), img_size=32, in_chans=3)
    register_model(f"vit_{size}_patch2_8", "vit", **shape, patch_size=2, img_size=8, in_chans=1)

# Foundation-model image towers, as timm's VisionTransformer builds them. `num_classes` keeps the class's
# default (1000), as every vitkit name has a head; timm's pretrained tags set 0 for DINOv2 and SigLIP (feature
# towers) and 512 for the CLIP towers' image projection: pass num_classes=... for those.
# DINOv2: patch 14 at 518, LayerScale; the reg4 variants add 4 registers outside the position embedding.
DINOV2_SIZES = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
for size, (dim, depth, heads) in DINOV2_SIZES.items():
    shape = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=14, img_size=518, init_values=1e-5)
    register_model(f"vit_{size}_patch14_dinov2", "vit", **shape, pretrained_cfg=DINOV2)
    register_model(f"vit_{size}_patch14_reg4_dinov2", "vit", **shape, reg_tokens=4, no_embed_class=True,
                   pretrained_cfg=DINOV2)
# ViT-g/14: packed SwiGLU MLP (fc1 holds value and gate), hidden width int(1536 * 2.66667 * 2) = 8192.
register_model("vit_giant_patch14_dinov2", "vit", embed_dim=1536, depth=40, num_heads=24, patch_size=14,
               img_size=518, init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer="swiglu_packed", act_layer="silu",
               pretrained_cfg=DINOV2)
register_model("vit_giant_patch14_reg4_dinov2", "vit", embed_dim=1536, depth=40, num_heads=24, patch_size=14,
               img_size=518, init_values=1e-5, mlp_ratio=2.66667 * 2, mlp_layer="swiglu_packed", act_layer="silu",
               reg_tokens=4, no_embed_class=True, pretrained_cfg=DINOV2)
# CLIP image towers: LayerNorm before the blocks (and no patch-projection bias), torch's LayerNorm eps.
CLIP_B16 = dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, img_size=224, pre_norm=True, norm_eps=1e-5)
register_model("vit_base_patch16_clip_224", "vit", **CLIP_B16, pretrained_cfg=OPENAI_CLIP)
register_model("vit_base_patch16_clip_quickgelu_224", "vit", **CLIP_B16, act_layer="quick_gelu",
               pretrained_cfg=OPENAI_CLIP)
# SigLIP image tower: no class token, attention-pool (MAP) head.
register_model("vit_base_patch16_siglip_224", "vit", embed_dim=768, depth=12, num_heads=12, patch_size=16,
               img_size=224, class_token=False, global_pool="map", pretrained_cfg=SIGLIP)
