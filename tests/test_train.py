"""`promptmux train`: the two tutorials' workflows, on the embedded model and the seed data."""

import hashlib
import json
from pathlib import Path

import pytest
from helpers import SHARED_DATA
from peft import PeftModel
from transformers import TrainerState

from promptmux.core.errors import DataError, PromptmuxError
from promptmux.models.loading import load_model, load_tokenizer
from promptmux.registry import Registry, TaskSpec
from promptmux.serving.bench.machine import busy_neighbour
from promptmux.tasks.config import TrainConfig
from promptmux.tasks.data import DataFields, Example, examples, fingerprint_files, load_records, split
from promptmux.tasks.encoding import TaskEncoder
from promptmux.tasks.evaluate import Evaluator
from promptmux.tasks.fit import COLLAPSE_RATIO, curve_from_history
from promptmux.tasks.scores import classification_report
from promptmux.tasks.train import train_task

DOG = SHARED_DATA / "dog_grooming"
PROMPTS_CSV = SHARED_DATA / "awesome_chatgpt_prompts" / "prompts.csv"
EXAMPLES = Path(__file__).resolve().parent.parent / "tasks" / "examples"


def test_classification_training_compares_tuned_and_base(cli, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    result = cli("train", "--base-model", "tiny-random-llama", "--kind", "classification", "--labels", "0,1",
                 "--input-field", "input", "--target-field", "output", "--epochs", "1", "--task", "dog-grooming",
                 "--data", str(DOG / "dog_grooming_reviews_train_data.json"),
                 "--eval-data", str(DOG / "dog_grooming_reviews_test_data.json"), "--num-virtual-tokens", "8",
                 "--registry", str(registry), "--output-dir", str(tmp_path / "run"), "--json", "--alias", "staging")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    manifest = Registry(str(registry)).versions.get("dog-grooming", summary["version"])
    for side in ("tuned", "base_model"):
        report = manifest.metrics[side]
        assert 0 <= report["accuracy"] <= 1 and 0 <= report["macro_f1"] <= 1
        matrix = report["confusion_matrix"]["rows_gold_cols_predicted"]
        assert sum(map(sum, matrix)) == 116 == manifest.metrics["eval_examples"]
    assert manifest.metrics["accuracy"] == manifest.metrics["tuned"]["accuracy"]
    assert manifest.training["epochs"] == 1 and manifest.init_method == "text"
    files = [DOG / "dog_grooming_reviews_train_data.json", DOG / "dog_grooming_reviews_test_data.json"]
    assert manifest.data_fingerprint == hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    png = Path(summary["learning_curve"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    curve = json.loads(Path(summary["metrics_json"]).read_text())["curve"]
    # 353 reviews: 35 held back for validation, 318 trained on in batches of 8.
    assert manifest.metrics["train_examples"] == 318 and manifest.metrics["validation_examples"] == 35
    assert len(curve["train_loss"]) == 40 and curve["eval_step"][0] == 0 and len(curve["eval_loss"]) >= 2
    assert manifest.metrics["best_validation_loss"] == min(curve["eval_loss"])
    assert Registry(str(registry)).aliases.of("dog-grooming") == {"staging": summary["version"]}


def test_generation_example_reports_loss_and_perplexity_before_and_after(cli, tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    args = ("train", "--spec", str(EXAMPLES / "act-as.yaml"), "--base-model", "tiny-random-llama",
            "--data", str(PROMPTS_CSV), "--limit", "50",
            "--input-field", "act", "--target-field", "prompt", "--epochs", "2", "--num-virtual-tokens", "4",
            "--max-output-tokens", "48", "--registry", registry.uri, "--output-dir", str(tmp_path / "run"), "--json")
    first = cli(*args)
    assert first.code == 0, first.err
    metrics = registry.versions.get("act-as", 1).metrics
    for stage in ("before", "after"):
        assert metrics[f"perplexity_{stage}"] == pytest.approx(2.718281828 ** metrics[f"eval_loss_{stage}"], rel=1e-6)
        assert len(metrics[f"samples_{stage}"]) == 3 and metrics["eval_examples"] == 10
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    second = cli(*args)
    assert second.code == 0, second.err
    assert registry.versions.get("act-as", 2).parent_version == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--labels", "yes,no"), "are not labels"),
        (("--labels", "0,1", "--input-field", "text"), "needs fields 'text' and 'output'"),
        (("--labels", "0,1", "--alias", "Not Valid"), "invalid alias"),
        (("--labels", "0,1", "--init", "magic"), "init"),
    ],
)
def test_failing_runs_leave_the_registry_untouched(cli, tmp_path: Path, extra: tuple, message: str) -> None:
    registry = Registry(str(tmp_path / "registry"))
    result = cli("train", "--task", "dog-grooming", "--kind", "classification", "--data",
                 str(DOG / "dog_grooming_reviews_test_data.json"), "--epochs", "1", "--registry", registry.uri,
                 "--output-dir", str(tmp_path / "run"), *extra)
    assert result.code == 1 and message in result.err and "Traceback" not in result.err
    assert registry.tasks.names() == []


def test_data_formats(tmp_path: Path) -> None:
    rows = [{"q": "a", "a": "1"}, {"q": "b", "a": "0"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("q,a\na,1\nb,0\n")
    for name in ("d.jsonl", "d.json", "d.csv"):
        assert examples(load_records(tmp_path / name), DataFields(input_field="q", target_field="a"), tmp_path / name) == [
            Example("a", "1"), Example("b", "0")]
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        load_records(tmp_path / "d.txt")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(DataError, match="cannot parse"):
        load_records(tmp_path / "bad.json")
    assert len(examples(load_records(PROMPTS_CSV), DataFields(input_field="act", target_field="prompt"), PROMPTS_CSV,
                        limit=50)) == 50
    assert fingerprint_files([tmp_path / "d.csv"]) == hashlib.sha256(b"q,a\na,1\nb,0\n").hexdigest()
    train, held_out = split([Example(str(i), "x") for i in range(10)], 0.2, seed=1)
    assert len(held_out) == 2 and not set(train) & set(held_out)


def test_classification_report() -> None:
    gold = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", "c", "c"]
    report = classification_report(gold, predicted, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    f1_a, f1_b, f1_c = 2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5
    assert report["macro_f1"] == pytest.approx((f1_a + f1_b + f1_c) / 3)
    assert report["confusion_matrix"]["rows_gold_cols_predicted"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_spec_training_section_sets_the_run_and_flags_override_it(cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: grooming\nkind: classification\nlabels: {'0': 'no', '1': 'yes'}\nbase_model: tiny-random-llama\n"
                    "training:\n  num_virtual_tokens: 5\n  epochs: 1\n  lr: 0.01\n  batch_size: 16\n")
    registry = Registry(str(tmp_path / "registry"))
    result = cli("train", "--spec", str(spec), "--data", str(DOG / "dog_grooming_reviews_test_data.json"),
                 "--lr", "0.02", "--registry", registry.uri, "--output-dir", str(tmp_path / "run"))
    assert result.code == 0, result.err
    manifest = registry.versions.get("grooming", 1)
    assert manifest.num_virtual_tokens == 5
    assert (manifest.training["epochs"], manifest.training["lr"], manifest.training["batch_size"]) == (1, 0.02, 16)
    for shown in ("tuned prompt", "untuned base model", "confusion matrix", "best checkpoint at step"):
        assert shown in result.out

    spec.write_text(spec.read_text() + "  learning_rate: 0.5\n")
    typo = cli("train", "--spec", str(spec), "--data", str(DOG / "dog_grooming_reviews_test_data.json"),
               "--registry", registry.uri, "--output-dir", str(tmp_path / "run2"))
    assert typo.code == 1 and "learning_rate" in typo.err and "Traceback" not in typo.err
    assert len(registry.versions.all("grooming")) == 1


def test_early_stopping_registers_the_best_checkpoint_not_the_last(tmp_path: Path) -> None:
    """A constant learning rate far too high makes the validation loss turn up after a few
    passes: training stops at the first pass without improvement (patience 1), and the
    registered prompt is the one with the best validation loss, not the last one."""
    train = examples(load_records(DOG / "dog_grooming_reviews_train_data.json"), DataFields(), DOG)[:160]
    held_out = train[:16]
    spec = TaskSpec(name="grooming", kind="classification", labels={"0": "0", "1": "1"}, base_model="tiny-random-llama")
    config = TrainConfig(base_model="tiny-random-llama", lr=1.0, lr_scheduler="constant", epochs=4, evals_per_epoch=4,
                         early_stopping_patience=1, num_virtual_tokens=4, init="random", seed=3)
    registry = Registry(str(tmp_path / "registry"))
    result = train_task(spec, train, held_out, config, registry, tmp_path / "run", "data")
    curve = json.loads(result.metrics_json.read_text())["curve"]
    assert result.metrics["stopped_early"] and curve["step"][-1] < 4 * 18
    best = min(curve["eval_loss"])
    assert curve["eval_step"][curve["eval_loss"].index(best)] == result.metrics["best_step"] < curve["step"][-1]
    assert not (tmp_path / "run" / "checkpoints").exists()

    _, validation = split(train, config.validation_fraction, config.seed)
    model = PeftModel.from_pretrained(load_model("tiny-random-llama", dtype="float32"),
                                      registry.versions.uri("grooming", result.manifest.version)).eval()
    encoder = TaskEncoder(spec, load_tokenizer("tiny-random-llama"), config.max_input_tokens, config.max_output_tokens)
    assert Evaluator(model, encoder, "", 8).eval_loss(validation) == pytest.approx(best, rel=1e-4)


def test_collapsing_training_loss_is_warned_about() -> None:
    def state(train_losses: list[float], eval_losses: list[float]) -> TrainerState:
        history = [{"step": i + 1, "loss": loss} for i, loss in enumerate(train_losses)]
        history += [{"step": 10 * i, "eval_loss": loss} for i, loss in enumerate(eval_losses)]
        return TrainerState(log_history=history, global_step=len(train_losses))

    memorised = curve_from_history(state([1.0] * 10 + [0.004] * 20, [0.9, 0.7, 0.8, 0.9]), planned_steps=30)
    assert len(memorised.warnings) == 1 and "memorises" in memorised.warnings[0]
    assert 0.7 > COLLAPSE_RATIO * 0.004 and memorised.best_step == 10 and not memorised.stopped_early
    learning = curve_from_history(state([1.0] * 10 + [0.3] * 20, [0.9, 0.4, 0.35, 0.33]), planned_steps=40)
    assert learning.warnings == [] and learning.best_step == 30 and learning.stopped_early


def test_dog_grooming_example_spec_reads_the_comment_of_every_seed_record() -> None:
    """The seed's test inputs carry an instruction its training inputs lack; the example
    spec's input_pattern gives the task the comment alone in both."""
    from promptmux.tasks.spec_file import example

    spec, fields, config = example("dog-grooming")
    assert (config.lr, config.method) == (0.03, "prompt")
    for name, count in (("dog_grooming_reviews_train_data.json", 353), ("dog_grooming_reviews_test_data.json", 116)):
        found = examples(load_records(DOG / name), fields, DOG / name)
        assert len(found) == count and {e.target for e in found} == set(spec.labels)
        assert not any("Comment" in e.input or "Satisf" in e.input or "Extract" in e.input for e in found)
    with pytest.raises(ValueError, match="exactly one group"):
        DataFields(input_pattern="no group")


def test_held_out_data_unlike_the_training_data_is_warned_about(tmp_path: Path) -> None:
    """The watsonx seed's failure in miniature: the cue that separates the training data
    means the opposite in the held-out data. Validation (drawn from the training data)
    looks perfect; the held-out loss does not, and the run says so."""
    train = [Example("a" * (3 + i % 5), "0") if i % 2 else Example("b" * (3 + i % 5), "1") for i in range(80)]
    held_out = [Example("a" * 4, "1"), Example("b" * 4, "0")] * 4
    spec = TaskSpec(name="cue", kind="classification", labels={"0": "0", "1": "1"}, base_model="tiny-random-llama")
    config = TrainConfig(base_model="tiny-random-llama", lr=0.3, epochs=6, num_virtual_tokens=8, init="random",
                         early_stopping_patience=0)
    result = train_task(spec, train, held_out, config, Registry(str(tmp_path / "registry")), tmp_path / "run", "data")
    assert result.metrics["best_validation_loss"] < 0.1 < 1.0 < result.metrics["eval_loss_after"]
    assert any("held-out data differs from the training data" in w for w in result.metrics["warnings"])


def test_the_same_training_twice_once_beside_a_busy_process_gives_the_same_run(tmp_path: Path) -> None:
    """Same command, same seed: the same steps, the same best checkpoint, the same figures and
    the same prompt, whatever else the machine is doing."""
    train = examples(load_records(DOG / "dog_grooming_reviews_train_data.json"), DataFields(), DOG)[:48]
    held_out = train[:8]
    spec = TaskSpec(name="grooming", kind="classification", labels={"0": "0", "1": "1"}, base_model="tiny-random-llama")
    config = TrainConfig(base_model="tiny-random-llama", lr=0.3, epochs=2, evals_per_epoch=3, early_stopping_patience=1,
                         num_virtual_tokens=4, init="random", seed=5)

    def run(name: str) -> tuple[dict, bytes]:
        registry = Registry(str(tmp_path / name))
        result = train_task(spec, train, held_out, config, registry, tmp_path / f"run-{name}", "data")
        figures = {key: value for key, value in result.metrics.items() if key != "train_seconds"}
        return {**figures, "curve": json.loads(result.metrics_json.read_text())["curve"]}, \
            (Path(registry.versions.uri("grooming", 1)) / "adapter_model.safetensors").read_bytes()

    quiet = run("quiet")
    with busy_neighbour():
        busy = run("busy")
    assert busy[0] == quiet[0] and busy[1] == quiet[1]


def test_a_spec_sets_each_method_its_own_lr_and_the_run_says_where_its_lr_came_from() -> None:
    """The spec's `training.lr` is for the spec's own method; another method takes
    `training.methods.<method>` or its own default, never the spec's lr silently."""
    from promptmux.tasks.spec_file import resolve

    fields = {"name": "t", "base_model": "tiny-random-llama",
              "training": {"lr": 0.03, "epochs": 3, "methods": {"p-tuning": {"lr": 0.01, "epochs": 5}}}}

    def config(**training: object) -> TrainConfig:
        return resolve(fields, {}, {}, training)[2]

    own, p_tuning, prefix, given = config(), config(method="p-tuning"), config(method="prefix"), config(method="prefix", lr=0.02)
    assert (own.lr, own.lr_from) == (0.03, "the spec's training.lr")
    assert (p_tuning.lr, p_tuning.epochs, p_tuning.lr_from) == (0.01, 5, "the spec's training.methods.p-tuning.lr")
    assert (prefix.lr, prefix.epochs) == (0.003, 3) and prefix.lr_from == ("the default for prefix: the spec's "
                                                                           "training.lr is for prompt")
    assert (given.lr, given.lr_from) == (0.02, "--lr")
    with pytest.raises(PromptmuxError, match="training.methods has lora"):
        resolve({**fields, "training": {"methods": {"lora": {"lr": 1}}}}, {}, {}, {})


def test_a_diverging_loss_stops_the_run_with_a_warning_naming_the_lr() -> None:
    """As prefix tuning at the prompt-tuning lr did on SmolLM2: the loss climbs from about 2
    to 16. The run stops at the first logged step where the last few losses are well above
    the first few; noise around a flat loss never stops it."""
    from transformers import TrainerControl, TrainingArguments

    from promptmux.tasks.fit import _Divergence

    def run(losses: list[float]) -> tuple[TrainerControl, list[str]]:
        warnings, control = [], TrainerControl()
        callback, state = _Divergence(0.03, "prefix", warnings), TrainerState()
        for step, loss in enumerate(losses, 1):
            state.global_step = step
            callback.on_log(TrainingArguments(output_dir="unused", report_to="none"), state, control, logs={"loss": loss})
            if control.should_training_stop:
                break
        return control, warnings

    stopped, warnings = run([2.1, 2.0, 1.9, 2.2, 2.0, 3.0, 6.0, 9.0, 12.0, 16.0, 16.5, 15.0])
    assert stopped.should_training_stop and warnings == [
        "training stopped at step 10: the loss climbed to 9.20 from 2.04 at the start; learning rate 0.03 is too high "
        "for prefix (try a tenth of it)"]
    flat, none = run([2.0, 2.3, 1.7, 2.4, 1.9, 2.6, 1.5, 2.2, 2.5, 1.8] * 3)
    assert not flat.should_training_stop and none == []


def events(folder: Path) -> list:
    """Every event in a TensorBoard folder's event files (TFRecord: length, its CRC, the record, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    found = []
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            found.append(event_pb2.Event.FromString(data[at + 12:at + 12 + length]))
            at += 12 + length + 4
    return found


def test_report_to_tensorboard_writes_the_run_where_tensorboard_reads_it(tmp_path: Path) -> None:
    train = examples(load_records(DOG / "dog_grooming_reviews_train_data.json"), DataFields(), DOG)[:40]
    spec = TaskSpec(name="grooming", kind="classification", labels={"0": "0", "1": "1"}, base_model="tiny-random-llama")
    config = TrainConfig(base_model="tiny-random-llama", lr=0.3, epochs=1, evals_per_epoch=2, num_virtual_tokens=4,
                         init="random", seed=3, report_to=["tensorboard"])
    result = train_task(spec, train, train[:8], config, Registry(str(tmp_path / "registry")), tmp_path / "run", "data")
    values = [(e.step, v.tag, v.simple_value) for e in events(tmp_path / "run" / "tensorboard") for v in e.summary.value]
    curve = json.loads(result.metrics_json.read_text())["curve"]
    logged = [(step, value) for step, tag, value in values if tag == "train/loss"]
    assert [step for step, _ in logged] == curve["step"]
    assert [value for _, value in logged] == pytest.approx(curve["train_loss"], rel=1e-5)
    assert any(tag == "eval/loss" for _, tag, _ in values)
    with pytest.raises(PromptmuxError, match=r"--report-to wandb needs wandb: pip install 'promptmux\[wandb\]'"):
        train_task(spec, train, train[:8], config.model_copy(update={"report_to": ["wandb"]}),
                   Registry(str(tmp_path / "other")), tmp_path / "run2", "data")
