"""PEFT adapters in and out: import a PEFT adapter directory of any prompt-learning method
as a task's new version, keeping its files byte for byte, and export a version as one, with
the task beside it (`promptmux-task.json`, which PEFT ignores) so an import elsewhere
recreates the task."""

from pathlib import Path

import fsspec

from promptmux.core.errors import ConflictError, IncompatiblePromptError, InvalidArtifactError, NotFoundError
from promptmux.core.limits import limits
from promptmux.methods.catalog import PEFT_TYPES, method, parse_config
from promptmux.methods.files import CONFIG_FILE, TENSOR_FILE
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.registry.layout import EXPORT_FILE, MANIFEST_FILE
from promptmux.registry.records import RecordFiles, version_rel
from promptmux.registry.schemas import ExportedTask, PromptVersion, TaskSpec
from promptmux.registry.storage import LocalStorage
from promptmux.registry.task_store import TaskStore
from promptmux.registry.version_store import VersionStore, artifact, checked_prompt, prompts


class PeftTransfer:
    def __init__(self, files: RecordFiles, tasks: TaskStore, versions: VersionStore) -> None:
        self.files, self.tasks, self.versions = files, tasks, versions

    def import_peft(
        self,
        source: str,
        task: str,
        base_fingerprint: BaseModelFingerprint,
        base_model: str,
        note: str = "",
        spec: TaskSpec | None = None,
        task_id: int | None = None,
        positions: int | None = None,
    ) -> PromptVersion:
        """Register a PEFT adapter directory (local path or fsspec URL) of any prompt-learning
        method (`promptmux.methods`; `task_id` chooses a multitask prompt's task), keeping its
        files as PEFT wrote them, and creating the task if needed: as `spec` says, by default a
        generation task with template `{input}`. A promptmux export keeps its version's init,
        training settings and metrics, and records where it came from (`training.lineage`). With
        `positions` (the base model's), a prompt that leaves no room for one input token is refused."""
        tasks, versions = self.tasks, self.versions
        fs, root = fsspec.core.url_to_fs(source)
        root = root.rstrip("/")
        config_bytes = _read_source(fs, f"{root}/{CONFIG_FILE}", source, "adapter_config_bytes")
        config = parse_config(config_bytes, source)
        if not isinstance(config.get("num_virtual_tokens"), int):  # PEFT sizes its prompt by it
            raise InvalidArtifactError(f"{source}: adapter_config needs num_virtual_tokens (an integer): PEFT cannot load it")
        tensor_path = f"{root}/{TENSOR_FILE}"
        if not fs.exists(tensor_path):
            if fs.exists(f"{root}/adapter_model.bin"):
                raise InvalidArtifactError(
                    f"{source}: only a pickled adapter_model.bin was found; promptmux loads safetensors only "
                    "(save the adapter with safe_serialization=True)"
                )
            raise InvalidArtifactError(f"{source}: no {TENSOR_FILE}")
        tensor_bytes = _read_source(fs, tensor_path, source, "tensor_bytes")
        name = PEFT_TYPES[config["peft_type"]]
        prompt = prompts().Prompt(name, artifact().decode_tensors(tensor_bytes, source), config,
                                  method(name).task_id(config, task_id), {CONFIG_FILE: config_bytes, TENSOR_FILE: tensor_bytes})
        expected = tasks.get(task).base_fingerprint if tasks.exists(task) else base_fingerprint
        prompt = checked_prompt(prompt, base_fingerprint, expected, source)  # before a task is created for it
        if positions is not None and prompt.num_virtual_tokens >= positions:
            raise IncompatiblePromptError(f"{source}: {prompt.num_virtual_tokens} virtual tokens leave no room for an input "
                                          f"in the base model's {positions} positions")
        imported = {"imported_from": source, "peft_type": config["peft_type"]}
        exported = self.read_export(source)
        with tasks.holding_first_version(spec or TaskSpec(name=task, base_model=base_model), base_fingerprint):
            if exported is not None:
                origin, manifest = exported
                return versions.register(task, prompt, base_fingerprint, init_method=manifest.init_method,
                                         init_text=manifest.init_text, metrics=manifest.metrics,
                                         training={**manifest.training, **imported, "lineage": origin.lineage()},
                                         data_fingerprint=manifest.data_fingerprint, note=note or manifest.note)
            init = str(config.get("prompt_tuning_init") or "").lower().replace("_", "-")
            return versions.register(task, prompt, base_fingerprint,
                                     init_method=f"imported-{name.replace('_', '-')}" + (f" ({init})" if init else ""),
                                     init_text=config.get("prompt_tuning_init_text"), training=imported, note=note)

    def read_export(self, source: str) -> tuple[ExportedTask, PromptVersion] | None:
        """What a promptmux export holds beside the PEFT files (the task and where the version
        came from, and the version's manifest); None for a plain PEFT adapter."""
        fs, root = fsspec.core.url_to_fs(source)
        root = root.rstrip("/")
        if not fs.exists(f"{root}/{EXPORT_FILE}"):
            return None
        origin = self.files.parse(ExportedTask, _read_source(fs, f"{root}/{EXPORT_FILE}", source, "spec_file_bytes"),
                                  f"{source.rstrip('/')}/{EXPORT_FILE}", outside=True)
        limits().check_spec(origin.spec)
        manifest = self.files.parse(PromptVersion, _read_source(fs, f"{root}/{MANIFEST_FILE}", source, "spec_file_bytes"),
                                    f"{source.rstrip('/')}/{MANIFEST_FILE}", outside=True)
        return origin, manifest

    def export(self, task: str, version: int, destination: str) -> str:
        """Write a version as a PEFT adapter directory at `destination` (path or fsspec URL): its
        files as stored (an imported adapter's as PEFT wrote them), checked first, and beside
        them the task's spec and origin (`ExportedTask`), which PEFT ignores."""
        self.versions.load_prompt(task, version)  # its sha256 and shape
        fs, root = fsspec.core.url_to_fs(destination)
        root = root.rstrip("/")
        if self._holds(fs, root):
            raise ConflictError(f"{destination} is inside the registry {self.files.uri}; export to a folder outside it")
        if fs.exists(f"{root}/{CONFIG_FILE}") or fs.exists(f"{root}/{TENSOR_FILE}"):
            raise ConflictError(f"{destination} already holds an adapter; choose an empty directory")
        fs.makedirs(root, exist_ok=True)
        # the PEFT files last: an export cut short lacks them, and so can neither be imported as
        # a plain adapter without its task nor block a second export to the same folder
        origin = ExportedTask(spec=self.tasks.get(task).spec, registry=self.files.uri, task=task, version=version)
        fs.pipe_file(f"{root}/{EXPORT_FILE}", origin.model_dump_json(indent=2).encode())
        for name in (MANIFEST_FILE, CONFIG_FILE, TENSOR_FILE):
            fs.pipe_file(f"{root}/{name}", self.files.storage.read_bytes(f"{version_rel(task, version)}/{name}"))
        return destination

    def _holds(self, fs: fsspec.AbstractFileSystem, path: str) -> bool:
        """Whether `path` on `fs` is this registry's folder or inside it."""
        storage = self.files.storage
        if type(fs) is not type(storage.fs):
            return False
        if isinstance(storage, LocalStorage):
            return Path(path).resolve().is_relative_to(Path(storage.uri))
        root = storage.root.rstrip("/")
        return path == root or path.startswith(f"{root}/")


def _read_source(fs: fsspec.AbstractFileSystem, path: str, source: str, limit: str) -> bytes:
    """A file of an import, refused unread when it is past the size limit `limit`."""
    try:
        limits().check_file(limit, fs.size(path), f"{source}: {path.rsplit('/', 1)[-1]}")
        return fs.cat_file(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise NotFoundError(f"{source}: {path.rsplit('/', 1)[-1]} not found") from exc
