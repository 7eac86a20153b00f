"""The multi-label and regression losses against torch's own, their recipe keys, and the training defaults each
label format gets (which metric picks the best checkpoint, and in which direction)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_finetune import loss
from hf_finetune.errors import RecipeError
from hf_finetune.recipe import best_metric, load_recipe
from hf_finetune.trainer import training_defaults


def test_multi_label_bce_with_pos_weight_equals_torch():
    torch.manual_seed(0)
    logits, labels = torch.randn(7, 4), (torch.rand(7, 4) > 0.6).float()
    weights = [1.0, 3.0, 0.5, 2.0]
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weights))(logits, labels)
    assert loss.MultiLabelBCE(weights)({"logits": logits}, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    plain = torch.nn.BCEWithLogitsLoss()(logits, labels)
    assert loss.MultiLabelBCE()((logits,), labels).item() == pytest.approx(plain.item(), rel=1e-6)


def test_regression_losses_equal_torch_on_a_one_output_head():
    torch.manual_seed(0)
    out, target = torch.randn(9, 1) * 3, torch.randn(9) * 3
    assert loss.RegressionLoss("mse")({"logits": out}, target).item() == pytest.approx(
        torch.nn.functional.mse_loss(out.squeeze(1), target).item(), rel=1e-6
    )
    huber = torch.nn.HuberLoss(delta=0.7)(out.squeeze(1), target)
    assert loss.RegressionLoss("huber", 0.7)({"logits": out}, target).item() == pytest.approx(huber.item(), rel=1e-6)


def test_balanced_pos_weight_is_negatives_over_positives_and_a_list_is_checked():
    assert loss.pos_weights("balanced", [2, 5, 10, 0], 10, ["a", "b", "c", "d"]) == [4.0, 1.0, 1.0, 1.0]
    assert loss.pos_weights([1, 2], [], 0, ["a", "b"]) == [1.0, 2.0]
    with pytest.raises(RecipeError, match=r"loss.pos_weight: 1 weights given, the data has 2 labels"):
        loss.pos_weights([1.0], [], 0, ["a", "b"])


def test_saved_balanced_pos_weight_comes_from_the_runs_train_counts(tmp_path: Path):
    run = {"splits": {"train": {"rows": 20, "class_counts": {"a": 5, "b": 10}}}}
    (tmp_path / "metrics.json").write_text(json.dumps({"run": run}))
    assert loss.saved_pos_weights("balanced", tmp_path, ["a", "b"]) == [3.0, 1.0]


def _recipe(**data):
    return load_recipe({"model": {"name": "simple_cnn"}, "data": {"source": "t.csv", **data}})


@pytest.mark.parametrize(
    ("fmt", "metric", "greater"),
    [("single", "accuracy", None), ("multi_label", "map", None), ("regression", "rmse", False)],
)
def test_each_format_keeps_the_best_checkpoint_by_its_own_metric_in_the_right_direction(fmt, metric, greater):
    extra = {"label_column": "y"} if fmt != "single" else {}
    recipe = _recipe(label_format=fmt, **extra)
    assert best_metric(recipe) == metric
    defaults = training_defaults({"load_best_model_at_end": True}, {}, best_metric(recipe))
    assert defaults["metric_for_best_model"] == metric
    assert defaults.get("greater_is_better") is greater  # None: transformers' own rule (not a "…loss") is right


def test_a_users_error_metric_is_minimised_and_their_direction_is_kept():
    assert training_defaults({"metric_for_best_model": "mae"}, {}, "accuracy")["greater_is_better"] is False
    kept = training_defaults({"metric_for_best_model": "mae", "greater_is_better": True}, {}, "accuracy")
    assert "greater_is_better" not in kept  # what the user wrote stays theirs


def test_thresholds_setting_reads_tune_or_a_number():
    assert _recipe(label_format="multi_label", label_column="y").metrics.thresholds is None

    def with_thresholds(value):
        return load_recipe(
            {"model": {"name": "simple_cnn"}, "data": {"source": "t.csv", "label_format": "multi_label"}},
            [f"metrics.thresholds={value}"],
        )

    assert with_thresholds("tune").metrics.thresholds == "tune"
    assert with_thresholds(0.3).metrics.thresholds == pytest.approx(0.3)
    with pytest.raises(
        RecipeError, match=r"metrics.thresholds: 'tune' or a threshold between 0 and 1, e.g. 0.5, got 'best'"
    ):
        with_thresholds("best")


def test_constant_baselines_score_what_they_say():
    import datasets

    from hf_finetune.formats import constant_baseline

    feature = datasets.Sequence(datasets.Value("float32"), length=2)
    train = datasets.Dataset.from_dict({"label": [[1, 0], [1, 1], [1, 0], [0, 0]]}, features=datasets.Features(
        {"label": feature}))  # fmt: skip
    test = datasets.Dataset.from_dict({"label": [[1, 0], [0, 1]]}, features=datasets.Features({"label": feature}))
    b = constant_baseline("multi_label", train, test, ["a", "b"])
    # "a" is in 3/4 of train rows, "b" in 1/4: always answering {a} gets one row exactly right
    assert b["predicted_labels"] == ["a"] and b["subset_accuracy"] == 0.5 and b["hamming_loss"] == 0.5
    values = datasets.Features({"label": datasets.Value("float32")})
    train = datasets.Dataset.from_dict({"label": [0.0, 2.0, 4.0]}, features=values)
    test = datasets.Dataset.from_dict({"label": [1.0, 5.0]}, features=values)
    b = constant_baseline("regression", train, test, ["y"])
    assert b["value"] == 2.0 and b["mae"] == pytest.approx(2.0) and b["rmse"] == pytest.approx(np.sqrt(5.0))
    # standardised targets: the baseline speaks the original units
    b = constant_baseline("regression", train, test, ["y"], target_scaler={"mean": 10.0, "std": 2.0})
    assert b["value"] == 14.0 and b["mae"] == pytest.approx(4.0)
