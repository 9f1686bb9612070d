"""Shape propagation: run the graph once and record each node's output shape and dtype."""

from __future__ import annotations

import contextlib
import io
import re
import weakref
from collections.abc import Sequence

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from graphopt.errors import CaptureError, first_line

RUN_SEED = 0


def propagate_shapes(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> object:
    """Run ``gm`` on ``inputs`` (no grad), store ``node.meta['tensor_meta']``, return outputs.

    The run is deterministic and leaves no trace: it runs on copies of ``inputs``, random ops
    see a fixed seed (so two graphs with the same dropout draw the same masks) and buffers such
    as BatchNorm running statistics are restored afterwards. A failing node raises a :class:`CaptureError`
    naming the node and its source line.

    Running the same graph again on the same inputs returns the outputs of the first run
    without running it (a pass that ran its result leaves nothing for verification to
    repeat): "the same" means the same generated code, the same parameter and buffer tensors
    unchanged since (their in-place version counters included), and the same input tensors,
    unchanged. The run is deterministic, so the outputs are those a new run would give.
    """
    key = _run_key(gm, inputs)
    last = _LAST_RUN.get(gm)
    if last is not None and last[0] == key:
        return last[1]
    outputs = _propagate(gm, inputs)
    _LAST_RUN[gm] = (_run_key(gm, inputs), outputs)  # after the run: buffers were restored
    return outputs


_LAST_RUN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _run_key(gm: fx.GraphModule, inputs: Sequence[object]) -> tuple:
    def tensor_key(t: object) -> object:
        return (id(t), t._version) if isinstance(t, torch.Tensor) else ("value", repr(t))

    state = [(n, tensor_key(t)) for n, t in [*gm.named_parameters(), *gm.named_buffers()]]
    return gm.code, tuple(state), tuple(tensor_key(x) for x in inputs)


def _propagate(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> object:
    prop = _TrackingShapeProp(gm)
    try:
        # ShapeProp prints a traceback before re-raising; the CaptureError says it all.
        with side_effect_free_run(gm), contextlib.redirect_stderr(io.StringIO()):
            # on copies: in-place ops in the graph (x.mul_(2)) must not change the caller's
            # tensors, or every later run (verification included) would see other inputs
            return prop.propagate(
                *(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs)
            )
    except Exception as exc:  # noqa: BLE001 - name the node that failed
        node = prop.current
        cause = exc.__cause__ or exc  # ShapeProp wraps the error in a message dumping meta
        raise CaptureError(
            f"the graph failed to run on the example inputs at node {node.name if node else '?'}: "
            f"{first_line(cause)}",
            module=str(node.target) if node is not None and node.op == "call_module" else None,
            location=source_location(node) if node is not None else None,
            hint="check the example input shapes and dtypes against what the model expects",
            node=node.name if node is not None else None,
        ) from exc


@contextlib.contextmanager
def side_effect_free_run(gm: fx.GraphModule):
    """No grad, a fixed seed for random ops, and every buffer restored afterwards."""
    buffers = {name: b.clone() for name, b in gm.named_buffers()}
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(RUN_SEED)
            yield
    finally:
        with torch.no_grad():
            for name, value in buffers.items():
                gm.get_buffer(name).copy_(value)


class _TrackingShapeProp(ShapeProp):
    """ShapeProp that remembers the node it is running, to name it when it fails."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> object:
        self.current = n
        return super().run_node(n)


def tensor_meta(node: fx.Node) -> TensorMetadata | None:
    """The recorded metadata of a node producing one tensor, else ``None``."""
    meta = node.meta.get("tensor_meta")
    return meta if isinstance(meta, TensorMetadata) else None


def shape_of(node: fx.Node) -> tuple[int, ...] | None:
    """The recorded output shape of a node producing one tensor, else ``None``."""
    meta = tensor_meta(node)
    return tuple(meta.shape) if meta is not None else None


def source_location(node: fx.Node) -> str | None:
    """``file:line: code`` of the user code that created ``node`` (from its stack trace).

    Frames inside torch itself (``torch/fx``, ``torch/nn/modules``) are skipped, so the
    location points at the model's own source.
    """
    frames = _FRAME.findall(node.stack_trace or "")
    user = [f for f in frames if not any(part in f[0] for part in _TORCH_INTERNALS)]
    if not user:
        return None
    filename, lineno, code = user[-1]
    return f"{filename}:{lineno}: {code.strip()}"


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n([^\n]*)')
_TORCH_INTERNALS = ("/torch/fx/", "/torch/nn/modules/module.py", "/torch/nn/modules/container.py")
