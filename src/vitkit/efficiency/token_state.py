"""What token merging and pruning remember across the blocks of one forward pass.

After merging, each remaining token stands for `size` original tokens and holds the originals marked
in `source`. Both start fresh at every pass through the blocks: the model family's adapter resets them
(`efficiency/adapters/`; for ViT, a plain call in the first block rather than a hook, so that
torch.compile traces it), and `forward`, `forward_features` and `forward_intermediates` all work
without wrapping the model."""

import torch


class TokenState:
    def __init__(self, num_prefix_tokens: int):
        self.num_prefix_tokens = num_prefix_tokens  # class, distillation and register tokens: never reduced
        self.prop_attn = False
        self.trace_source = False
        self.size: torch.Tensor | None = None  # (B, N, 1), float32
        self.source: torch.Tensor | None = None  # (B, N, tokens at the start)

    def reset(self) -> None:
        self.size = None
        self.source = None

    def attention_bias(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor | None:
        """Proportional attention: a token standing for s originals gets log(s) added to its logits."""
        if not self.prop_attn or self.size is None:
            return attn_bias
        bias = self.size.log()[:, None, None, :, 0].to(x.dtype)  # (B, 1, 1, N): every head, every query
        return bias if attn_bias is None else attn_bias + bias

    def sizes(self, x: torch.Tensor) -> torch.Tensor:
        # float32 whatever the model's dtype: bf16 counts exactly only up to 256
        return torch.ones(*x.shape[:2], 1, device=x.device) if self.size is None else self.size

    def sources(self, x: torch.Tensor) -> torch.Tensor:
        if self.source is not None:
            return self.source
        B, N, _ = x.shape
        return torch.eye(N, device=x.device, dtype=x.dtype).expand(B, N, N)
