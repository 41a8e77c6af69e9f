"""The multi-prompt inference engine: one frozen base model, mixed-task batches.

Pure torch + transformers, no Ray. The base model is loaded once and never modified;
soft prompts come from the registry through a bounded prompt cache. A batch may mix
rows of any tasks and versions; each row gets its own soft prompt and exactly what
PEFT would compute for it alone (see `batching` for the layout).

The engine is the scheduler's model runner (`protocol.ModelRunner`): it prefills,
decodes one step and classifies, on whichever single thread drives it. A prompt's
pinned KV is computed there too, at the prompt's first batch, so that loading a prompt
(from a request handler or the registry refresh) never runs the model.

Running rows live in the KV pool (`kv_pool.py`, `paged_batch.py`), allocated once at start-up
for `engine.max_tokens_in_flight` tokens (or `engine.kv_cache_mb`), where the model allows it:
its attention goes through transformers' `AttentionInterface`, it takes position ids, and a
probe decoded through the pool equals the same probe decoded on transformers' own cache.
Otherwise the engine says so once and decodes on `DynamicCache` (`dynamic_batch.py`).
"""

import inspect
import logging

import torch
from transformers.utils import ModelOutput

from promptmux.core.fields import GenerationParams
from promptmux.core.usage import Usage
from promptmux.models.loading import fingerprint, learned_positions, load_model, load_tokenizer, max_positions
from promptmux.registry import PromptVersion
from promptmux.serving.engine.batching import (
    ClassificationRow,
    GenerationRow,
    ModelInputs,
    Row,
    cache_argument,
    embedding_batch,
    pinned_batch,
    virtual_token_kv,
)
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.dynamic_batch import DynamicBatch
from promptmux.serving.engine.input_processor import InputProcessor
from promptmux.serving.engine.kv_pool import ATTENTION, KVLayout, KVPool, PoolStats
from promptmux.serving.engine.limits import check_positions
from promptmux.serving.engine.outputs import ClassificationOutput
from promptmux.serving.engine.packed_linear import can_pack, pack_linears
from promptmux.serving.engine.paged_batch import PagedBatch
from promptmux.serving.engine.prompt_cache import CachedPrompt, MiB, PromptCache, PromptKey, PromptLoader, ServingFormat
from promptmux.serving.engine.sampling import RowSampler, select_tokens
from promptmux.serving.engine.threads import CpuThreads

log = logging.getLogger(__name__)
PROBE_STEPS = 3  # decode steps the start-up probe compares between the KV pool and DynamicCache


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float noise: another kernel sums in another order."""
    a, b = a.float(), b.float()
    return torch.allclose(a, b, rtol=0.0, atol=0.02 * float(b.abs().max()) + 1e-4)


class Engine:
    def __init__(self, config: EngineConfig, loader: PromptLoader) -> None:
        self.config = config
        self.loader = loader
        on_cpu = config.resolved_device() == "cpu"
        self.threads = CpuThreads(config.resolved_cpu_threads(), adaptive=config.cpu_threads is None) if on_cpu else None
        self.model = load_model(
            config.base_model, config.resolved_dtype(), config.resolved_device(), config.trust_remote_code
        )
        self.model.requires_grad_(False)
        self.tokenizer = load_tokenizer(config.base_model, config.trust_remote_code)
        self.fingerprint = fingerprint(self.model)
        self.parameter_count = sum(p.numel() for p in self.model.parameters())  # before packing turns weights into buffers
        if can_pack(self.model):
            pack_linears(self.model)
        self.max_positions = self._max_positions(config.max_model_len)
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_ids = self._eos_ids()
        parameters = inspect.signature(self.model.forward).parameters
        self.takes_position_ids = "position_ids" in parameters
        self.cache_argument = cache_argument(self.model)
        self._takes_logits_to_keep = "logits_to_keep" in parameters
        probe = self._probe_rows()
        pinned = self._pinned_kv_probe(probe) if config.pinned_kv and probe else None
        self.pinned_kv = pinned is not None
        self.kv_pool: KVPool | None = None
        self.kv_pool = self._kv_pool(probe) if probe and config.kv_pool else None
        if self.kv_pool is not None and config.kv_cache_mb is not None:
            self.config = config.model_copy(update={"max_tokens_in_flight": self.kv_pool.capacity_tokens})
        serving = ServingFormat.of(self.fingerprint, self.model.dtype, self.device, pinned)
        self.prompts = PromptCache(loader, int(config.prompt_cache_mb * MiB), serving)
        self.inputs = InputProcessor(self.tokenizer, self.config, self.check_positions)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---------------------------------------------------------------- prompts
    def prompt(self, manifest: PromptVersion) -> CachedPrompt:
        """The version's prompt from the cache, loading it on a miss (no model forward)."""
        return self.prompts.get(manifest)

    def _pin(self, rows: list[Row]) -> None:
        """Compute the virtual tokens' KV of each prompt that has none yet (its first batch)."""
        for row in rows:
            if row.prompt.kv is None:
                row.prompt.kv = virtual_token_kv(self.model, row.prompt.embeds, self.takes_position_ids)

    def _probe_rows(self) -> list[GenerationRow] | None:
        """Two random prompts with their KV, and random inputs: what the start-up checks run. None
        when the model's cache is not a plain one (no pinned KV, no pool)."""
        generator = torch.Generator().manual_seed(0)
        hidden = self.fingerprint.hidden_size
        rows = []
        for n, length in ((3, 4), (5, 2)):
            embeds = torch.randn(n, hidden, generator=generator).to(self.device, self.model.dtype)
            kv = virtual_token_kv(self.model, embeds, self.takes_position_ids)
            if kv is None:
                log.warning("%s: cache layout unsupported for pinned KV and the KV pool; recomputing virtual tokens "
                            "and decoding on transformers' DynamicCache", self.config.base_model)
                return None
            ids = torch.randint(3, self.fingerprint.vocab_size, (length,), generator=generator).tolist()
            rows.append(GenerationRow(CachedPrompt(PromptKey("probe", 1, ""), embeds, kv), ids,
                                      GenerationParams(max_new_tokens=PROBE_STEPS + 1)))
        return rows

    def _pinned_kv_probe(self, rows: list[GenerationRow]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Check once, on the probe, that pinned KV reproduces the embedding path; the probe's KV
        (its shapes and bytes are the model's) if it does, else None (virtual tokens are
        recomputed, and prefix-tuned prompts cannot be served)."""
        with torch.inference_mode():
            pinned = self.forward(pinned_batch(self.model, rows, self.pad_id, self.takes_position_ids).kwargs, 1)
            plain = self.forward(embedding_batch(self.model, rows, self.pad_id, self.takes_position_ids).kwargs, 1)
        if not _close(pinned.logits[:, -1], plain.logits[:, -1]):
            log.warning("%s: pinned KV does not reproduce the model; recomputing virtual tokens", self.config.base_model)
            return None
        return rows[0].prompt.kv

    def _kv_pool(self, rows: list[GenerationRow]) -> KVPool | None:
        """The KV pool, if the model's attention can read it and a probe decoded through it equals
        the probe decoded on transformers' own cache; else None (and why, once)."""
        name = self.config.base_model
        if not (type(self.model)._supports_attention_backend and self.takes_position_ids
                and self.model.config._attn_implementation == "sdpa"):
            log.warning("%s: its attention does not go through transformers' AttentionInterface with sdpa; decoding "
                        "without the KV pool, on DynamicCache", name)
            return None
        layout = KVLayout.of(rows[0].prompt.kv)
        tokens = self.config.max_tokens_in_flight
        if self.config.kv_cache_mb is not None:
            tokens = int(self.config.kv_cache_mb * MiB) // layout.bytes_per_token
        pool = KVPool(layout, tokens, self.config.max_batch_size, self.device)
        self.model.set_attn_implementation(ATTENTION)
        dynamic = self._probe_decode(rows)
        self.kv_pool = pool
        try:
            paged = self._probe_decode(rows)
        except Exception:  # any failure of the pool's path means the model is decoded without it
            log.exception("%s: decoding through the KV pool failed; decoding on DynamicCache", name)
            paged = []
        self.kv_pool = None
        if len(paged) != len(dynamic) or not all(map(_close, paged, dynamic)) or pool.stats().blocks_held:
            log.warning("%s: decoding through the KV pool does not reproduce the model; decoding on DynamicCache", name)
            self.model.set_attn_implementation("sdpa")
            return None
        return pool

    def _probe_decode(self, rows: list[GenerationRow]) -> list[torch.Tensor]:
        """The probe's logits after its prefill and each of `PROBE_STEPS` greedy decode steps."""
        batch = self.prefill(rows)
        logits = [batch.logits.float()]
        for _ in range(PROBE_STEPS):
            self.decode_step(batch, batch.logits.argmax(-1))
            logits.append(batch.logits.float())
        batch.release()
        return logits

    def kv_stats(self) -> PoolStats | None:
        """What the KV pool holds now (None without a pool)."""
        return self.kv_pool.stats() if self.kv_pool is not None else None

    # ----------------------------------------------------------------- inputs
    def _eos_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def batch_inputs(self, rows: list[Row]) -> ModelInputs:
        if not self.pinned_kv:
            return embedding_batch(self.model, rows, self.pad_id, self.takes_position_ids)
        self._pin(rows)
        return pinned_batch(self.model, rows, self.pad_id, self.takes_position_ids)

    def forward(self, kwargs: dict, keep: int) -> ModelOutput:
        """One forward with the cache on, returning logits for the last `keep` positions."""
        if self.threads is not None:
            self.threads.adjust()
        if self._takes_logits_to_keep:
            return self.model(**kwargs, use_cache=True, logits_to_keep=keep)
        output = self.model(**kwargs, use_cache=True)
        output.logits = output.logits[:, -keep:]
        return output

    def _max_positions(self, asked: int | None) -> int | None:
        """The positions a row may use: `engine.max_model_len`, or the model's own; a length past
        a learned position table is clamped to the table, saying so (no request may index past it)."""
        if asked is None:
            return max_positions(self.model.config)
        table = learned_positions(self.model)
        if table is not None and asked > table:
            log.warning("%s: engine.max_model_len %d is past the model's learned position table of %d; using %d",
                        self.config.base_model, asked, table, table)
            return table
        return asked

    def check_positions(self, virtual: int, inputs: int, new: int, new_field: str = "max_new_tokens") -> None:
        """Refuse a row that would run past the model's positions or the engine's KV budget
        (`PositionLimitError`, naming the three numbers): past the position table a forward
        fails, on a GPU with a device-side assert that poisons every row beside it."""
        budget = self.config.max_tokens_in_flight
        if self.max_positions is not None and self.max_positions <= budget:
            whose = "engine.max_model_len" if self.config.max_model_len == self.max_positions else "the model's"
            limit, what = self.max_positions, f"{whose} {self.max_positions} positions"
        else:
            limit, what = budget, f"the engine's KV budget of {budget} tokens (engine.max_tokens_in_flight)"
        check_positions(virtual, inputs, new, limit, what, new_field)

    # ------------------------------------------------------------- generation
    @torch.inference_mode()
    def prefill(self, rows: list[GenerationRow]) -> PagedBatch | DynamicBatch:
        """Run the rows' prompts and inputs together; in the KV pool, each row's keys and values
        then move into blocks of its own."""
        inputs = self.batch_inputs(rows)
        output = self.forward(inputs.kwargs, 1)
        if self.kv_pool is None:
            return DynamicBatch.from_prefill(inputs, output)
        return PagedBatch.from_prefill(self.kv_pool, rows, inputs, output)

    @torch.inference_mode()
    def decode_step(self, batch: PagedBatch | DynamicBatch, tokens: torch.Tensor) -> None:
        batch.advance(self.forward(batch.step_inputs(tokens, self.takes_position_ids, self.cache_argument), 1))

    def sample(self, batch: PagedBatch | DynamicBatch, samplers: list[RowSampler], done: list[bool],
               generated: list[int]) -> tuple[list[int], dict[int, Exception]]:
        return select_tokens(samplers, done, batch.logits, generated, sorted(self.eos_ids))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def logits(self, rows: list[Row], keep: int = 1) -> torch.Tensor:
        """Logits `[rows, keep, vocab]` of the last `keep` positions of each row, in one mixed batch."""
        return self.forward(self.batch_inputs(rows).kwargs, keep).logits

    # --------------------------------------------------------- classification
    def classify(self, rows: list[ClassificationRow]) -> list[ClassificationOutput]:
        """Score each row's labels by the log-probability of their verbalizers after the input.

        Rows whose labels are all single tokens need one sequence (the input); others get
        one sequence per label (input + verbalizer). All sequences, of any tasks, are
        scored in mixed batches.
        """
        for row in rows:
            longest = max(len(v) for v in row.verbalizers.values())
            self.check_positions(row.prompt.num_virtual_tokens, len(row.input_ids), longest, "verbalizer tokens")
        items: list[tuple[int, str | None, Row, list[int]]] = []
        for r, row in enumerate(rows):
            if all(len(v) == 1 for v in row.verbalizers.values()):
                items.append((r, None, Row(row.prompt, row.input_ids), []))
            else:
                items += [(r, label, Row(row.prompt, row.input_ids + v), v) for label, v in row.verbalizers.items()]
        scores: list[dict[str, float]] = [{} for _ in rows]
        size = self.config.max_batch_size
        for start in range(0, len(items), size):
            chunk = items[start: start + size]
            keep = max(len(target) for *_, target in chunk) + 1
            logprobs = torch.log_softmax(self.logits([item[2] for item in chunk], keep).float(), -1)
            for b, (r, label, _, target) in enumerate(chunk):
                if label is None:
                    scores[r] = {lab: float(logprobs[b, -1, v[0]]) for lab, v in rows[r].verbalizers.items()}
                else:
                    steps = logprobs[b, -len(target) - 1: -1]
                    scores[r][label] = float(steps[torch.arange(len(target)), torch.tensor(target)].sum())
        results = []
        for r, row in enumerate(rows):
            labels = list(row.verbalizers)
            values = torch.tensor([scores[r][label] for label in labels])
            results.append(
                ClassificationOutput(
                    label=labels[int(values.argmax())],
                    probabilities=dict(zip(labels, torch.softmax(values, 0).tolist())),
                    usage=Usage.count(len(row.input_ids), 0, row.prompt.num_virtual_tokens),
                )
            )
        return results
