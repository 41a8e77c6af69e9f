"""Linear layers on a CPU through oneDNN, each weight packed once at start-up.

A decode step multiplies a few rows by every weight matrix: skinny GEMMs that torch's default
CPU path (MKL through `F.linear`) runs far below the machine's peak. oneDNN runs the same
products from a weight packed once into its own blocked layout (what inductor's `freezing`
does when it compiles a model) about twice as fast on the projections of SmolLM2-135M at 16
rows, and three times as fast on its 49,152 x 576 output layer (`docs/benchmarks.md`). The
results differ from MKL's in the last bits only, as any other summation order does.

Sibling projections that read the same input (a Llama layer's query, key and value; its gate
and up projections) run as one GEMM over their concatenated weights, as vLLM's merged linear
layers do: the first sibling called computes all of them, the others take their slice.

oneDNN builds a kernel for each shape of input it meets and keeps it: served prefills, of any
length, grew a process by hundreds of megabytes. So the packed path takes only the decode step's
row counts (`kv_pool.ROW_BUCKETS`, a handful of shapes); prefills, classification and other
shapes run on the weight as it was, kept beside its packed copy (the packed copies double the
memory of the linear weights: 0.5 GB more for SmolLM2-135M in float32).

Only float32 models on a CPU with oneDNN are packed; elsewhere (CUDA, bfloat16) the layers stay
as they are.
"""

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from promptmux.serving.engine.kv_pool import ROW_BUCKETS

ROWS_HINT = 16  # the batch oneDNN's packed layout is chosen for; any other row count runs on it too
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
PACKED_ROWS = frozenset(ROW_BUCKETS)


def _packed(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), ROWS_HINT)


def _linear(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`x @ weight.T + bias`: through oneDNN's packed weight for a decode step's row counts."""
    if x.numel() // x.shape[-1] in PACKED_ROWS:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


class PackedLinear(torch.nn.Module):
    """A linear layer `[out, in]` with its weight also packed for oneDNN."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.register_buffer("packed", _packed(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight, self.packed, self.bias)


class SharedInput:
    """Sibling linear layers run as one: `[out_1 + out_2 + ..., in]`, packed. The product for
    an input is kept until every sibling has taken its slice of it (or another input comes)."""

    def __init__(self, layers: list[torch.nn.Linear]) -> None:
        self.weight = torch.cat([layer.weight.detach() for layer in layers])
        self.packed = _packed(self.weight)
        has_bias = any(layer.bias is not None for layer in layers)
        self.bias = torch.cat([layer.bias.detach() if layer.bias is not None else layer.weight.new_zeros(
            layer.out_features) for layer in layers]) if has_bias else None
        ends = torch.tensor([layer.out_features for layer in layers]).cumsum(0).tolist()
        self.spans = list(zip([0, *ends[:-1]], ends))
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._taken: set[int] = set()

    def slice(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if x is not self._input or index in self._taken:
            self._input, self._output, self._taken = x, _linear(x, self.weight, self.packed, self.bias), set()
        start, end = self.spans[index]
        out = self._output[..., start:end]
        self._taken.add(index)
        if len(self._taken) == len(self.spans):  # every sibling has its slice: free the product
            self._input = self._output = None
        return out


class SiblingLinear(torch.nn.Module):
    """One of the layers a `SharedInput` runs together."""

    def __init__(self, shared: SharedInput, index: int) -> None:
        super().__init__()
        self.shared = shared
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.slice(self.index, x)


def can_pack(model: torch.nn.Module) -> bool:
    parameter = next(model.parameters())
    return parameter.device.type == "cpu" and parameter.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def pack_linears(model: torch.nn.Module) -> int:
    """Replace every linear layer (and GPT-2's `Conv1D`) of a frozen float32 CPU model by a
    packed one, siblings that read one input by one shared GEMM; the number replaced."""
    replaced = 0
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        for names in SIBLINGS:
            if all(isinstance(children.get(name), torch.nn.Linear) for name in names):
                shared = SharedInput([children[name] for name in names])
                for index, name in enumerate(names):
                    setattr(parent, name, SiblingLinear(shared, index))
                replaced += len(names)
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, PackedLinear(child.weight, child.bias))
            elif isinstance(child, Conv1D):  # weight [in, out]
                setattr(parent, name, PackedLinear(child.weight.detach().t(), child.bias))
            else:
                continue
            replaced += 1
    return replaced
