"""Start-up: import open_clip without the two seconds fsar never uses; build a backbone without the random
initialisation that loading its weights overwrites.

`import_open_clip()`:

`import open_clip` imports torchvision (for its image transforms and FrozenBatchNorm2d) and timm (for
timm-based towers). torchvision's `ops.roi_align` runs `from torch._dynamo.utils import is_compile_supported`
at import, which loads torch._dynamo (sympy, the compiler stack): about 1.8 s of CPU on the 2-core machine,
the largest part of `fsar predict`'s start-up; timm itself needs the real torch._dynamo at import. fsar
calls neither roi_align nor timm: its backbones are open_clip's own ViT towers (`check_architecture`), and a
timm- or Hugging Face-tower model is refused by name before it is built.

So while open_clip is imported, and only then, `torch._dynamo.utils` is a stand-in whose one function
forwards to the real one on first call (the real module loads then), and `timm` reads as not installed
(open_clip records that and carries on). Both entries are removed from `sys.modules` right after, so a later
`import torch._dynamo` or `import timm` anywhere in the process gets the real module. When either is already
imported (torch.compile was used, timm was imported), open_clip is imported as usual.

`no_weight_init()`: while a model whose every parameter and buffer is then loaded from a checkpoint with
strict=True (open_clip's full-weights path: a tag or a file) is built, torch.nn.init's functions do
nothing, so its tensors are only allocated (ViT-B-16: about 150 M values not drawn, then overwritten).
Buffers that modules compute themselves (the causal mask) are unaffected: they do not come from torch.nn.init.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["import_open_clip", "no_weight_init"]

_DYNAMO, _DYNAMO_UTILS = "torch._dynamo", "torch._dynamo.utils"


def _is_compile_supported(*args: Any, **kwargs: Any) -> Any:
    from torch._dynamo.utils import is_compile_supported  # the real one (the stand-in is gone by then)

    return is_compile_supported(*args, **kwargs)


def import_open_clip() -> types.ModuleType:
    """The open_clip module, imported without loading torch._dynamo or timm when neither is loaded yet."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    if _DYNAMO in sys.modules or "timm" in sys.modules or "torchvision" in sys.modules:
        import open_clip

        return open_clip
    import torch  # noqa: F401 - the real torch first: only its _dynamo submodule is stood in for

    dynamo = types.ModuleType(_DYNAMO)
    utils = types.ModuleType(_DYNAMO_UTILS)
    utils.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
    dynamo.utils = utils  # type: ignore[attr-defined]
    stand_ins = {_DYNAMO: dynamo, _DYNAMO_UTILS: utils, "timm": None}
    sys.modules.update(stand_ins)
    try:
        import open_clip
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
        if vars(torch).get("_dynamo") is dynamo:  # set as torch's attribute (getattr would import the real one)
            del torch._dynamo
    return open_clip


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip


@contextlib.contextmanager
def no_weight_init() -> Iterator[None]:
    """torch.nn.init's in-place initialisers return their tensor untouched inside the block (not thread-safe:
    for building a model that a strict checkpoint load then fills)."""
    from torch.nn import init

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}

    def keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    for name in saved:
        setattr(init, name, keep)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)
