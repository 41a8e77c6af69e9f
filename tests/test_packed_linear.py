"""Linear layers packed for oneDNN: the same products, siblings as one GEMM, and a process that
does not grow with the shapes of the prefills it serves."""

import random

import psutil
import pytest
import torch

from promptmux.core.fields import GenerationParams
from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, TaskSpec
from promptmux.serving.engine.batching import GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.offline import generate
from promptmux.serving.engine.packed_linear import PackedLinear, SiblingLinear, can_pack, pack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def test_a_packed_model_computes_what_it_computed_with_siblings_run_as_one_gemm() -> None:
    model = load_model("tiny-random-llama", dtype="float32").eval()
    packed = load_model("tiny-random-llama", dtype="float32").eval()
    assert can_pack(packed) and pack_linears(packed) == 4 * 7 + 1  # 4 layers x (q, k, v, o, gate, up, down) + lm_head
    attention = packed.model.layers[0].self_attn
    assert isinstance(attention.q_proj, SiblingLinear) and attention.q_proj.shared is attention.v_proj.shared
    assert isinstance(packed.lm_head, PackedLinear)
    for rows in (1, 3, 16):  # a decode step's row count runs packed; any other on the weight as it was
        ids = torch.randint(3, 250, (rows, 1 if rows != 3 else 9))
        with torch.inference_mode():
            expected, got = model(input_ids=ids).logits, packed(input_ids=ids).logits
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), rows


def test_prefills_of_many_lengths_leave_the_process_the_size_it_was(tmp_path) -> None:
    """oneDNN keeps a kernel per input shape: only the decode step's few shapes may reach it."""
    from promptmux.serving.engine.runner import Engine

    registry = Registry(str(tmp_path / "registry"))
    fp = fingerprint(load_model("tiny-random-llama", dtype="float32"))
    registry.tasks.create(TaskSpec(name="t", base_model="tiny-random-llama"), fp)
    registry.versions.register("t", torch.randn(6, fp.hidden_size), fp)
    engine = Engine(EngineConfig(dtype="float32"), registry.versions)
    prompt, rng = engine.prompt(registry.versions.get("t", 1)), random.Random(0)

    def prefills(count: int) -> None:
        for _ in range(count):
            rows = [GenerationRow(prompt, [rng.randint(3, 250) for _ in range(rng.randint(5, 150))],
                                  GenerationParams(max_new_tokens=2)) for _ in range(rng.randint(1, 6))]
            generate(engine, rows)

    prefills(20)
    before = psutil.Process().memory_info().rss
    prefills(300)  # before the packed path was limited to a decode step's rows: +300 MB
    assert psutil.Process().memory_info().rss - before < 40 * 2**20
