"""Classification scores: accuracy, macro F1 and the confusion matrix."""


def classification_report(gold: list[str], predicted: list[str], labels: list[str]) -> dict:
    matrix = {g: {p: 0 for p in labels} for g in labels}
    for g, p in zip(gold, predicted):
        matrix[g][p] += 1
    f1s = []
    for label in labels:
        true_pos = matrix[label][label]
        predicted_pos = sum(matrix[g][label] for g in labels)
        actual_pos = sum(matrix[label].values())
        precision = true_pos / predicted_pos if predicted_pos else 0.0
        recall = true_pos / actual_pos if actual_pos else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    correct = sum(g == p for g, p in zip(gold, predicted))
    return {
        "accuracy": correct / len(gold) if gold else 0.0,
        "macro_f1": sum(f1s) / len(f1s),
        "confusion_matrix": {"labels": labels, "rows_gold_cols_predicted": [[matrix[g][p] for p in labels] for g in labels]},
    }
