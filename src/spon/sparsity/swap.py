"""How spon puts its wrappers into a model and takes them out again (module swap, never a patched forward)."""

from __future__ import annotations

from torch import nn

__all__ = ["set_submodule", "Restorable"]


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule called `name` (dotted, as `named_modules` gives it) is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


class Restorable(nn.Module):
    """A wrapper that `unsparsify_` swaps back for the plain `nn.Linear` it stands for.

    Later stages (serving's output head) subclass it, so the sparsity stage can undo them without importing them.
    """

    def to_linear(self) -> nn.Linear:
        raise NotImplementedError
