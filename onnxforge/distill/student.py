"""A student made of the teacher: the same model with a subset of its transformer layers, copied with their weights."""

from __future__ import annotations

import copy

from torch import nn

STACK_NAMES = ("layer", "layers")  # what transformers calls the list of blocks (BERT's encoder.layer, …)


def layer_stack(model: nn.Module) -> str:
    """The dotted name of the module list that holds ``model``'s transformer blocks."""
    count = model.config.num_hidden_layers
    found = [name for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) == count and name.rsplit(".", 1)[-1] in STACK_NAMES]  # fmt: skip
    if len(found) != 1:
        raise ValueError(f"{type(model).__name__}: expected one list of {count} layers named {' or '.join(STACK_NAMES)}, "
                         f"found {found or 'none'}; this model cannot be distilled by keeping layers")  # fmt: skip
    return found[0]


def every_other(count: int) -> tuple[int, ...]:
    """DistilBERT's choice: layers 0, 2, 4, … of ``count``."""
    return tuple(range(0, count, 2))


def check_layers(layers: tuple[int, ...], count: int) -> None:
    """Refuse a layer list that is empty, unordered, repeats a layer or names one the teacher lacks."""
    if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= count:
        raise ValueError(f"layers {list(layers)}: need distinct teacher layers in increasing order, each in 0..{count - 1}")


def keep_layers(teacher: nn.Module, layers: tuple[int, ...]) -> nn.Module:
    """A copy of ``teacher`` holding only ``layers`` of its transformer blocks (in order), its config updated."""
    name = layer_stack(teacher)
    check_layers(layers, teacher.config.num_hidden_layers)
    student = copy.deepcopy(teacher)
    parent_name, _, attribute = name.rpartition(".")
    parent = student.get_submodule(parent_name)
    blocks = getattr(parent, attribute)
    setattr(parent, attribute, nn.ModuleList([blocks[i] for i in layers]))
    student.config.num_hidden_layers = len(layers)
    return student
