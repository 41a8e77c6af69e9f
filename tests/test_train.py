"""`promptmux train`: the two tutorials' workflows, on the embedded model and the seed data."""

import hashlib
import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from registry import Registry
from tasks.data import DataError, Example, examples, fingerprint_files, load_records, split
from tasks.scores import classification_report

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
    manifest = Registry(str(registry)).get_version("dog-grooming", summary["version"])
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
    assert len(curve["train_loss"]) == 45 and len(curve["eval_loss"]) >= 2
    assert Registry(str(registry)).aliases("dog-grooming") == {"staging": summary["version"]}


def test_generation_example_reports_loss_and_perplexity_before_and_after(cli, tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    args = ("train", "--spec", str(EXAMPLES / "act-as.yaml"), "--data", str(PROMPTS_CSV), "--limit", "50",
            "--input-field", "act", "--target-field", "prompt", "--epochs", "2", "--num-virtual-tokens", "4",
            "--max-output-tokens", "48", "--registry", registry.uri, "--output-dir", str(tmp_path / "run"), "--json")
    first = cli(*args)
    assert first.code == 0, first.err
    metrics = registry.get_version("act-as", 1).metrics
    for stage in ("before", "after"):
        assert metrics[f"perplexity_{stage}"] == pytest.approx(2.718281828 ** metrics[f"eval_loss_{stage}"], rel=1e-6)
        assert len(metrics[f"samples_{stage}"]) == 3 and metrics["eval_examples"] == 10
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    second = cli(*args)
    assert second.code == 0, second.err
    assert registry.get_version("act-as", 2).parent_version == 1


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
    assert registry.list_tasks() == []


def test_data_formats(tmp_path: Path) -> None:
    rows = [{"q": "a", "a": "1"}, {"q": "b", "a": "0"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("q,a\na,1\nb,0\n")
    for name in ("d.jsonl", "d.json", "d.csv"):
        assert examples(load_records(tmp_path / name), "q", "a", tmp_path / name) == [Example("a", "1"), Example("b", "0")]
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported format"):
        load_records(tmp_path / "d.txt")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(DataError, match="cannot parse"):
        load_records(tmp_path / "bad.json")
    assert len(examples(load_records(PROMPTS_CSV), "act", "prompt", PROMPTS_CSV, limit=50)) == 50
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
