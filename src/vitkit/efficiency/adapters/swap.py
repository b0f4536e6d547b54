"""The adapter every token-sequence family here uses: swap a reducing block's class for a subclass of the
family's block that runs attention, hands the tokens to its `token_reducer`, then runs the MLP half.

No module or parameter is added, so `state_dict()` keys, weights and checkpoints stay the plain model's. The
token state lives on the model as `model.token_state`; block 0 always gets a reducer (merging nothing unless
asked) that resets it before its attention, a plain call inside the block rather than a hook, so that
`forward`, `forward_features` and `forward_intermediates` all reset it and torch.compile / ONNX export trace it.
A family adapter names its block class and reducing subclass and reports the facts of `TokenAdapter`.
"""

from torch import nn

from ..reducer import BlockReducer
from ..token_state import TokenState
from . import TokenAdapter


class BlockSwapAdapter(TokenAdapter):
    block: type[nn.Module]  # the family's plain block (exactly this class is swapped)
    reducing_block: type[nn.Module]  # its subclass with a `token_reducer`

    def blocks(self, model: nn.Module):
        return model.blocks

    def state(self, model: nn.Module) -> TokenState | None:
        return getattr(model, "token_state", None)

    def install(self, model: nn.Module) -> TokenState:
        state = self.state(model)
        if state is None:
            state = model.token_state = TokenState(self.num_prefix_tokens(model))
            self._swap(model, 0).first = True
            self.installed(model, state)
        return state

    def installed(self, model: nn.Module, state: TokenState) -> None:
        """Anything else the family needs once the state exists (nothing by default)."""

    def reducers(self, model: nn.Module) -> list[BlockReducer | None]:
        return [b.token_reducer if isinstance(b, self.reducing_block) else None for b in self.blocks(model)]

    def reducer(self, model: nn.Module, index: int) -> BlockReducer:
        self.install(model)
        return self._swap(model, index)

    def _swap(self, model: nn.Module, index: int) -> BlockReducer:
        block = self.blocks(model)[index]
        if isinstance(block, self.reducing_block):
            return block.token_reducer
        if type(block) is not self.block:
            raise TypeError(f"token reduction knows {self.block.__name__}, not {type(block).__name__} (block {index})")
        block.__class__ = self.reducing_block  # same modules and parameters: state_dict keys unchanged
        block.token_reducer = BlockReducer(model.token_state)
        return block.token_reducer
