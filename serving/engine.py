"""The multi-prompt inference engine: one frozen base model, mixed-task batches.

Pure torch + transformers, no Ray. The base model is loaded once and never modified;
soft prompts come from the registry through a bounded prompt cache. A batch may mix
rows of any tasks and versions; each row gets its own soft prompt and exactly what
PEFT would compute for it alone (see `batching` for the layout).
"""

import inspect
import logging
from dataclasses import dataclass

import torch

from registry import IncompatiblePromptError, PromptVersion, Registry
from registry.base_models import fingerprint, load_model, load_tokenizer
from registry.schemas import GenerationParams
from serving.batching import ModelInputs, Row, embedding_batch, pinned_batch, virtual_token_kv
from serving.config import EngineConfig
from serving.errors import RequestError
from serving.prompt_cache import CachedPrompt, PromptCache, PromptKey
from serving.sampling import RowSampler, select_tokens
from serving.schemas import ClassificationOutput, GenerationOutput, Usage

log = logging.getLogger(__name__)


@dataclass
class GenerationRow:
    prompt: CachedPrompt
    input_ids: list[int]
    params: GenerationParams


@dataclass
class ClassificationRow:
    prompt: CachedPrompt
    input_ids: list[int]
    labels: dict[str, str]


class Engine:
    def __init__(self, config: EngineConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.model = load_model(
            config.base_model, config.resolved_dtype(), config.resolved_device(), config.trust_remote_code
        )
        self.model.requires_grad_(False)
        self.tokenizer = load_tokenizer(config.base_model, config.trust_remote_code)
        self.fingerprint = fingerprint(self.model)
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_ids = self._eos_ids()
        parameters = inspect.signature(self.model.forward).parameters
        self._takes_position_ids = "position_ids" in parameters
        self._takes_logits_to_keep = "logits_to_keep" in parameters
        self.pinned_kv = config.pinned_kv and self._pinned_kv_is_exact()
        self.prompts = PromptCache(registry, int(config.prompt_cache_mb * 2**20), self._prepare_prompt)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---------------------------------------------------------------- prompts
    def prompt(self, manifest: PromptVersion) -> CachedPrompt:
        return self.prompts.get(manifest)

    def _prepare_prompt(self, manifest: PromptVersion, tensor: torch.Tensor) -> CachedPrompt:
        problems = self.fingerprint.differences(manifest.base_fingerprint)
        if tensor.shape[1] != self.fingerprint.hidden_size:
            problems.insert(0, f"token_dim {tensor.shape[1]} != hidden_size {self.fingerprint.hidden_size}")
        if problems:
            raise IncompatiblePromptError(
                f"{manifest.task}@{manifest.version} does not fit the served base model: " + "; ".join(problems)
            )
        embeds = tensor.to(self.device, self.model.dtype)
        kv = virtual_token_kv(self.model, embeds, self._takes_position_ids) if self.pinned_kv else None
        return CachedPrompt(PromptKey.of(manifest), embeds, kv)

    def _pinned_kv_is_exact(self) -> bool:
        """Check once, on a random probe, that pinned KV reproduces the embedding path."""
        generator = torch.Generator().manual_seed(0)
        hidden = self.fingerprint.hidden_size
        rows = []
        for n, length in ((3, 4), (5, 2)):
            embeds = torch.randn(n, hidden, generator=generator).to(self.device, self.model.dtype)
            kv = virtual_token_kv(self.model, embeds, self._takes_position_ids)
            if kv is None:
                log.warning("%s: cache layout unsupported for pinned KV; recomputing virtual tokens", self.config.base_model)
                return False
            ids = torch.randint(3, self.fingerprint.vocab_size, (length,), generator=generator).tolist()
            rows.append(Row(CachedPrompt(PromptKey("probe", 1, ""), embeds, kv), ids))
        with torch.inference_mode():
            pinned = self._forward(pinned_batch(self.model, rows, self.pad_id, self._takes_position_ids), 1)
            plain = self._forward(embedding_batch(self.model, rows, self.pad_id, self._takes_position_ids), 1)
        a, b = pinned.logits[:, -1].float(), plain.logits[:, -1].float()
        if not torch.allclose(a, b, rtol=0.0, atol=0.02 * float(b.abs().max()) + 1e-4):
            log.warning("%s: pinned KV does not reproduce the model; recomputing virtual tokens", self.config.base_model)
            return False
        return True

    # ----------------------------------------------------------------- inputs
    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered input (a trailing EOS some tokenizers append is dropped)."""
        ids = self.tokenizer(text, add_special_tokens=True).input_ids
        if ids and ids[-1] in self.eos_ids and len(ids) > 1:
            ids = ids[:-1]
        if not ids:
            raise RequestError("the input is empty after tokenization")
        if len(ids) > self.config.max_input_tokens:
            raise RequestError(f"input has {len(ids)} tokens; the limit is {self.config.max_input_tokens}")
        return ids

    def _eos_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _batch(self, rows: list[Row]) -> ModelInputs:
        build = pinned_batch if self.pinned_kv else embedding_batch
        return build(self.model, rows, self.pad_id, self._takes_position_ids)

    def _forward(self, inputs: ModelInputs | dict, keep: int):
        kwargs = inputs.kwargs if isinstance(inputs, ModelInputs) else inputs
        if self._takes_logits_to_keep:
            return self.model(**kwargs, use_cache=True, logits_to_keep=keep)
        output = self.model(**kwargs, use_cache=True)
        output.logits = output.logits[:, -keep:]
        return output

    # ------------------------------------------------------------- generation
    def check_params(self, params: GenerationParams) -> None:
        if params.max_new_tokens > self.config.max_new_tokens:
            raise RequestError(f"max_new_tokens {params.max_new_tokens} exceeds the limit {self.config.max_new_tokens}")

    def generate(self, rows: list[GenerationRow]) -> list[GenerationOutput]:
        """Generate for every row; rows are run in batches of at most `max_batch_size`."""
        for row in rows:
            self.check_params(row.params)
        size = self.config.max_batch_size
        results: list[GenerationOutput] = []
        for start in range(0, len(rows), size):
            chunk = rows[start: start + size]
            results += self._generate_batch([Row(r.prompt, r.input_ids) for r in chunk], [r.params for r in chunk])
        return results

    @torch.inference_mode()
    def logits(self, rows: list[Row], keep: int = 1) -> torch.Tensor:
        """Logits `[rows, keep, vocab]` of the last `keep` positions of each row, in one mixed batch."""
        return self._forward(self._batch(rows), keep).logits

    @torch.inference_mode()
    def _generate_batch(self, rows: list[Row], params: list[GenerationParams]) -> list[GenerationOutput]:
        inputs = self._batch(rows)
        output = self._forward(inputs, 1)
        logits, cache = output.logits[:, -1], output.past_key_values
        mask, positions = inputs.attention_mask, inputs.next_positions
        samplers = [RowSampler(p, self.device, len(r.input_ids), self.eos_ids) for r, p in zip(rows, params)]
        generated: list[list[int]] = [[] for _ in rows]
        finish: list[str] = ["length"] * len(rows)
        active = list(range(len(rows)))
        while True:
            histories = [
                None if samplers[i].plain_greedy
                else torch.tensor([rows[i].input_ids + generated[i]], device=self.device)
                for i in active
            ]
            tokens = select_tokens([samplers[i] for i in active], histories, logits).tolist()
            keep = []
            for j, (i, token) in enumerate(zip(active, tokens)):
                if token in self.eos_ids:
                    finish[i] = "stop"
                    continue
                generated[i].append(token)
                if params[i].stop and self._stop_at(generated[i], params[i].stop) is not None:
                    finish[i] = "stop"
                elif len(generated[i]) < params[i].max_new_tokens:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                active = [active[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            step = {
                "input_ids": torch.tensor([[generated[i][-1]] for i in active], device=self.device),
                "attention_mask": mask,
                "past_key_values": cache,
            }
            if self._takes_position_ids:
                step["position_ids"] = positions[:, None]
            output = self._forward(step, 1)
            logits, cache = output.logits[:, -1], output.past_key_values
            positions = positions + 1
        return [self._output(rows[i], generated[i], finish[i], params[i].stop) for i in range(len(rows))]

    def _stop_at(self, tokens: list[int], stops: list[str]) -> int | None:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        found = [text.find(stop) for stop in stops if stop and stop in text]
        return min(found) if found else None

    def _output(self, row: Row, tokens: list[int], finish: str, stops: list[str]) -> GenerationOutput:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = self._stop_at(tokens, stops) if stops else None
        return GenerationOutput(
            text=text if cut is None else text[:cut],
            token_ids=tokens,
            finish_reason=finish,
            usage=_usage(row, len(tokens)),
        )

    # --------------------------------------------------------- classification
    def classify(self, rows: list[ClassificationRow]) -> list[ClassificationOutput]:
        """Score each row's labels by the log-probability of their verbalizers after the input.

        Rows whose labels are all single tokens need one sequence (the input); others get
        one sequence per label (input + verbalizer). All sequences, of any tasks, are
        scored in mixed batches.
        """
        items: list[tuple[int, str | None, Row, list[int]]] = []
        verbalizers = []
        for r, row in enumerate(rows):
            ids = {label: self._verbalizer_ids(text) for label, text in row.labels.items()}
            verbalizers.append(ids)
            if all(len(v) == 1 for v in ids.values()):
                items.append((r, None, Row(row.prompt, row.input_ids), []))
            else:
                items += [(r, label, Row(row.prompt, row.input_ids + v), v) for label, v in ids.items()]
        scores: list[dict[str, float]] = [{} for _ in rows]
        size = self.config.max_batch_size
        for start in range(0, len(items), size):
            chunk = items[start: start + size]
            keep = max(len(target) for *_, target in chunk) + 1
            logprobs = torch.log_softmax(self.logits([item[2] for item in chunk], keep).float(), -1)
            for b, (r, label, _, target) in enumerate(chunk):
                if label is None:
                    scores[r] = {lab: float(logprobs[b, -1, v[0]]) for lab, v in verbalizers[r].items()}
                else:
                    steps = logprobs[b, -len(target) - 1: -1]
                    scores[r][label] = float(steps[torch.arange(len(target)), torch.tensor(target)].sum())
        results = []
        for r, row in enumerate(rows):
            labels = list(row.labels)
            values = torch.tensor([scores[r][label] for label in labels])
            results.append(
                ClassificationOutput(
                    label=labels[int(values.argmax())],
                    probabilities=dict(zip(labels, torch.softmax(values, 0).tolist())),
                    usage=_usage(Row(row.prompt, row.input_ids), 0),
                )
            )
        return results

    def _verbalizer_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            raise RequestError(f"verbalizer {text!r} tokenizes to nothing")
        return ids


def _usage(row: Row, completion: int) -> Usage:
    prompt = len(row.input_ids)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        virtual_tokens=row.prompt.num_virtual_tokens,
    )
