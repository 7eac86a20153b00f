"""Classification report: accuracy, macro/weighted P/R/F1, per-class rows and a confusion matrix.

A local `evaluate` module. Load it by its folder path, e.g.
``evaluate.load(str(Path(hf_finetune.__file__).parent / "metric_modules" / "classification_report"))``.

Notes for editors (evaluate 0.4.6 quirks):
- evaluate copies this file alone into its modules cache and imports it from there, so it must stay
  self-contained: no relative imports, no imports from hf_finetune.
- evaluate scans import lines with a regex to check dependencies and misreads `import a, b`
  (it tries to import a module named "a,"): import one module per `import` line.
- evaluate picks the first non-abstract EvaluationModule subclass in this module's namespace, and
  `evaluate.Metric` is not abstract: never bind it here by name (`from evaluate import Metric`).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

_DESCRIPTION = """\
Classification report for single-label multi-class classification. Returns overall accuracy,
precision, recall and F1 averaged over classes (macro: unweighted mean; weighted: mean weighted by
each class's support), one row per class with its precision, recall, F1 and support, and the
confusion matrix (rows are true labels, columns are predicted labels).

Every class in range(num_labels) gets a per-class row and a confusion-matrix row and column, even
when it occurs in neither the references nor the predictions of a small evaluation set. Undefined
ratios (no predictions for precision, no references for recall) are 0. Macro averages are taken over
the classes that occur in the references or the predictions, as scikit-learn does by default, so a
class absent from both does not pull the macro scores down; weighted averages give such classes no
weight anyway.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted class indices, each in range(num_labels).
    references (`list` of `int`): True class indices, each in range(num_labels).
    num_labels (`int`): Number of classes. Required, so classes missing from a small evaluation set
        still get a per-class row and a confusion-matrix row and column.
    label_names (`list` of `str`, *optional*): Class names, one per class index; defaults to "0", "1", ...

Returns:
    accuracy (`float`): Fraction of predictions equal to the reference.
    precision_macro, recall_macro, f1_macro (`float`): Unweighted means over the classes present in
        references or predictions.
    precision_weighted, recall_weighted, f1_weighted (`float`): Means weighted by class support.
    per_class (`list` of `dict`): One dict per class index: label, precision, recall, f1, support.
    confusion_matrix (`list` of `list` of `int`): num_labels x num_labels counts; entry [i][j] counts
        samples whose true class is i and predicted class is j.

Examples:
    >>> report = evaluate.load("path/to/classification_report")
    >>> out = report.compute(predictions=[0, 1, 1], references=[0, 1, 0], num_labels=3)
    >>> round(out["accuracy"], 4)
    0.6667
    >>> out["confusion_matrix"]
    [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
"""

_CITATION = """\
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                }
            ),
            format="numpy",
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_recall_fscore_support.html",
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html",
            ],
        )

    def _compute(self, predictions, references, num_labels=None, label_names=None):
        if num_labels is None:
            raise ValueError("classification_report needs num_labels (the number of classes).")
        num_labels = int(num_labels)
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {num_labels}.")
        if label_names is None:
            label_names = [str(i) for i in range(num_labels)]
        label_names = [str(name) for name in label_names]
        if len(label_names) != num_labels:
            raise ValueError(f"label_names has {len(label_names)} names but num_labels is {num_labels}.")

        predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
        references = np.asarray(references, dtype=np.int64).reshape(-1)
        _check_in_range(predictions, references, num_labels)
        all_labels = list(range(num_labels))
        precision, recall, f1, support, matrix, accuracy, present = _counts(predictions, references, all_labels)

        scores = {
            "precision": np.asarray(precision, dtype=np.float64),
            "recall": np.asarray(recall, dtype=np.float64),
            "f1": np.asarray(f1, dtype=np.float64),
        }
        weights = np.asarray(support, dtype=np.float64)
        result = {"accuracy": accuracy}
        for name, values in scores.items():
            result[f"{name}_macro"] = float(values[present].mean()) if present else 0.0
        for name, values in scores.items():
            result[f"{name}_weighted"] = float(np.dot(values, weights) / weights.sum()) if weights.sum() else 0.0
        result["per_class"] = [
            {
                "label": label_names[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in all_labels
        ]
        result["confusion_matrix"] = [[int(v) for v in row] for row in matrix]
        return result


def _check_in_range(predictions, references, num_labels):
    # sklearn silently drops values outside `labels`, which would hide a label-mapping bug.
    for what, values in (("predictions", predictions), ("references", references)):
        bad = values[(values < 0) | (values >= num_labels)]
        if bad.size:
            raise ValueError(f"{what} hold class indices outside range({num_labels}): {sorted(set(bad.tolist()))[:10]}")


def _counts(predictions, references, all_labels):
    """Per-class precision, recall, F1 and support, the confusion matrix, accuracy and the classes that occur."""
    num_labels = len(all_labels)
    if references.size == 0:
        zeros = [0.0] * num_labels
        matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
        return zeros, zeros, zeros, [0] * num_labels, matrix, 0.0, []
    precision, recall, f1, support = precision_recall_fscore_support(
        references, predictions, labels=all_labels, average=None, zero_division=0
    )
    matrix = confusion_matrix(references, predictions, labels=all_labels)
    accuracy = float(np.mean(predictions == references))
    present = sorted(set(references.tolist()) | set(predictions.tolist()))
    return precision, recall, f1, support, matrix, accuracy, present
