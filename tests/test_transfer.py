"""Transfer strategies (full, head_only, partial, lp_ft; the fitted linear_probe is tests/test_probe.py), layer-wise
learning rates, frozen BatchNorm, and loading local weights (`model.weights`), on tiny models: simple_cnn, timm's
test_resnet, a tiny ViT and a tiny BERT.

Runs go through `finetune`; a callback records the model at the start of training (before any step), at each epoch's
end and at the end, plus the optimizer's parameter groups as Trainer built them.
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

from hf_finetune import finetune
from hf_finetune.cli import main
from hf_finetune.errors import ModelError
from hf_finetune.recipe import ModelSpec, TransferSpec
from hf_finetune.transfer import map_layers, plan_transfer

TIMM_RESNET = {"name": "timm:test_resnet", "pretrained": False, "image_size": 32, "config": {}}
BN_CNN = {
    "name": "simple_cnn",
    "image_size": 16,
    "config": {"filters": [8, 8], "dense_units": [16], "batch_norm": True},
}
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
LABELS = ["a", "b", "c"]


class Recorder(TrainerCallback):
    """Snapshots of the model's state (parameters and buffers) and the optimizer's groups, by parameter name."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self.groups: list[dict] = []
        self.optimizer = None
        self.trainable: dict[str, set[str]] = {}  # when -> names of parameters with requires_grad
        self.ndim: dict[str, int] = {}
        self.first_epoch_steps: int | None = None

    def _record(self, when: str, model) -> None:
        self.states[when] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.trainable[when] = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._record("begin", model)
        names = {id(p): n for n, p in model.named_parameters()}
        self.ndim = {n: p.ndim for n, p in model.named_parameters()}
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        self.groups = [
            {
                "lr": g.get("initial_lr", g["lr"]),
                "weight_decay": g["weight_decay"],
                "momentum": g.get("momentum"),
                "params": [names[id(p)] for p in g["params"]],
            }
            for g in self.optimizer.param_groups
        ]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.trainable[f"step {state.global_step}"] = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.first_epoch_steps is None:
            self.first_epoch_steps = state.global_step
            self._record("epoch 1", model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._record("end", model)

    def lr_of(self) -> dict[str, float]:
        return {name: g["lr"] for g in self.groups for name in g["params"]}


def _changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def _saved_state(out: Path, text: bool = False) -> dict[str, torch.Tensor]:
    """The saved model as transformers loads it (names as in memory, whatever the file calls them)."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    import hf_finetune.models  # noqa: F401  (registers simple_cnn with the Auto classes)

    auto = AutoModelForSequenceClassification if text else AutoModelForImageClassification
    return auto.from_pretrained(out).state_dict()


def _head(state: dict) -> set[str]:
    return {k for k in state if k.startswith(("classifier.", "timm_model.fc."))}


# --------------------------------------------------------------------------------------------- model structure


def test_map_layers_finds_the_blocks_of_each_kind_of_model():
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        TimmWrapperConfig,
        TimmWrapperForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    from hf_finetune.models import SimpleCNNConfig, SimpleCNNForImageClassification

    cnn = SimpleCNNForImageClassification(
        SimpleCNNConfig(image_size=16, filters=[4, 4, 4], dense_units=[8, 8], batch_norm=True, num_labels=3)
    )
    layers = map_layers(cnn)
    assert layers.num_blocks == 5  # three conv blocks, then two dense layers
    assert layers.head == ["classifier.weight", "classifier.bias"]
    assert layers.layer["blocks.0.conv.weight"] == 1 and layers.layer["blocks.2.norm.bias"] == 3
    assert layers.layer["dense.0.linear.weight"] == 4 and layers.layer["dense.1.linear.bias"] == 5

    resnet = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="test_resnet", num_labels=3))
    layers = map_layers(resnet)
    assert layers.num_blocks == 4  # layer1..layer4, one residual block each
    assert layers.head == ["timm_model.fc.weight", "timm_model.fc.bias"]
    assert layers.layer["timm_model.conv1.0.weight"] == 0 and layers.layer["timm_model.bn1.weight"] == 0
    assert layers.layer["timm_model.layer1.0.conv1.weight"] == 1 and layers.layer["timm_model.layer4.0.bn2.bias"] == 4

    vit = ViTForImageClassification(
        ViTConfig(
            image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=16, num_labels=3,
        )
    )  # fmt: skip
    layers = map_layers(vit)
    assert layers.num_blocks == 3 and layers.head == ["classifier.weight", "classifier.bias"]
    assert layers.layer["vit.embeddings.cls_token"] == 0
    assert layers.layer["vit.layers.2.mlp.fc2.weight"] == 3
    assert layers.layer["vit.layernorm.weight"] == layers.neck == 4

    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=16,
            num_labels=3,
        )
    )  # fmt: skip
    layers = map_layers(bert)
    assert layers.num_blocks == bert.config.num_hidden_layers == 3
    assert layers.layer["bert.embeddings.word_embeddings.weight"] == 0
    assert layers.layer["bert.encoder.layer.0.attention.self.query.weight"] == 1
    assert layers.layer["bert.pooler.dense.weight"] == layers.neck == 4
    assert set(layers.layer) | set(layers.head) == {n for n, _ in bert.named_parameters()}


def test_distilled_timm_model_has_both_heads():
    # DeiT-distilled's get_classifier() is a tuple (class head, distillation head)
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    with torch.device("meta"):
        model = TimmWrapperForImageClassification(
            TimmWrapperConfig(architecture="deit_tiny_distilled_patch16_224", num_labels=3)
        )
    layers = map_layers(model)
    assert set(layers.head) == {f"timm_model.{h}.{p}" for h in ("head", "head_dist") for p in ("weight", "bias")}
    assert layers.num_blocks == 12


def test_partial_plan_includes_the_neck_and_errors_name_both_numbers():
    from transformers import ViTConfig, ViTForImageClassification

    vit = ViTForImageClassification(
        ViTConfig(
            image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=16, num_labels=3,
        )
    )  # fmt: skip
    plan = plan_transfer(vit, TransferSpec(strategy="partial", unfreeze_last=1))
    expected = {
        n for n, _ in vit.named_parameters() if n.startswith(("vit.layers.1.", "vit.layernorm.", "classifier."))
    }
    assert plan.trainable_now == expected and not plan.trainable_later

    with pytest.raises(ModelError, match=r"unfreeze_last 3: ViTForImageClassification has 2 blocks; use 1\.\.2"):
        plan_transfer(vit, TransferSpec(strategy="partial", unfreeze_last=3))
    with pytest.raises(ModelError, match=r"partial needs transfer\.unfreeze_last \(1\.\.2\)"):
        plan_transfer(vit, TransferSpec(strategy="partial"))
    for strategy in ("linear_probe", "head_only"):
        with pytest.raises(ModelError, match=f"applies to strategies partial and lp_ft, not {strategy}"):
            plan_transfer(vit, TransferSpec(strategy=strategy, unfreeze_last=1))


def test_model_without_a_head_has_nothing_to_probe():
    from transformers import BertConfig, BertModel

    bare = BertModel(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    )
    with pytest.raises(ModelError, match="cannot find the classification head"):
        plan_transfer(bare, TransferSpec(strategy="linear_probe"))


def test_frozen_batchnorm_stays_in_eval_mode_also_without_affine_parameters():
    from hf_finetune.transfer import freeze_batchnorm

    frozen = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2, affine=False)
    )
    trained = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2, affine=False))
    model = torch.nn.Sequential(frozen, trained)
    frozen.requires_grad_(False)
    handles = freeze_batchnorm(model)
    assert len(handles) == 2
    model.train()  # as Trainer does before every step
    model(torch.randn(4, 1, 3, 3))
    assert frozen[1].num_batches_tracked == 0 and frozen[2].num_batches_tracked == 0
    assert torch.equal(frozen[2].running_mean, torch.zeros(2))
    assert trained[1].num_batches_tracked == 1  # BatchNorm in a trained module keeps learning its statistics


def test_cli_exits_2_when_the_strategy_does_not_fit_the_model(tiny_recipe, tmp_path: Path, capsys):
    recipe = tiny_recipe(model=BN_CNN, transfer={"strategy": "partial", "unfreeze_last": 9})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unfreeze_last 9" in err and "has 3 blocks" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------- training runs


def test_head_only_timm_resnet_sgd_momentum_keeps_backbone_and_batchnorm_statistics(tiny_recipe):
    # the classic epoch-trained probe: replace the fc layer, train only it with SGD, lr 1e-3, momentum 0.9
    rec = Recorder()
    training = {"num_train_epochs": 1, "optim": "sgd", "optim_args": "momentum=0.9", "learning_rate": 1e-3}
    result = finetune(
        tiny_recipe(model=TIMM_RESNET, transfer={"strategy": "head_only"}, training=training), callbacks=[rec]
    )
    assert type(rec.optimizer) is torch.optim.SGD
    assert [(g["lr"], g["momentum"], sorted(g["params"])) for g in rec.groups] == [
        (1e-3, 0.9, ["timm_model.fc.bias", "timm_model.fc.weight"])
    ]
    assert rec.trainable["begin"] == {"timm_model.fc.weight", "timm_model.fc.bias"}

    before, saved = rec.states["begin"], _saved_state(result.output_dir)
    bn_buffers = [k for k in before if k.endswith(BN_BUFFERS)]
    assert len(bn_buffers) >= 3 * 10  # test_resnet has 15 BatchNorm layers: all of them are compared
    # every backbone parameter and every BatchNorm statistic is bit-identical; only the new head moved
    assert _changed(before, saved) == {"timm_model.fc.weight", "timm_model.fc.bias"}
    assert _changed(rec.states["end"], saved) == set()  # what was saved is what trained


def test_full_fine_tuning_with_layer_decay_updates_everything_at_per_layer_rates(tiny_recipe):
    # also the control for the linear probe: with nothing frozen, BatchNorm statistics do move
    rec = Recorder()
    lr, decay, head_lr = 1e-2, 0.5, 5e-2
    result = finetune(
        tiny_recipe(
            model=TIMM_RESNET,
            transfer={"strategy": "full", "layer_decay": decay, "head_lr": head_lr},
            training={"num_train_epochs": 1, "learning_rate": lr, "weight_decay": 0.1},
        ),
        callbacks=[rec],
    )

    def expected_lr(name: str) -> float:
        part = name.split(".")[1]
        if part == "fc":
            return head_lr
        block = int(part.removeprefix("layer")) if part.startswith("layer") else 0  # conv1/bn1: the stem
        return lr * decay ** (4 + 1 - block)  # 4 blocks: layer4 gets lr × 0.5, the stem lr × 0.5**5

    lrs = rec.lr_of()
    assert set(lrs) == set(rec.ndim)  # every parameter is in exactly one group
    assert sum(len(g["params"]) for g in rec.groups) == len(rec.ndim)
    for name, got in lrs.items():
        assert got == pytest.approx(expected_lr(name), rel=1e-9), name
    assert {round(v, 12) for v in lrs.values()} == {round(lr * decay**k, 12) for k in range(1, 6)} | {head_lr}
    for group in rec.groups:
        for name in group["params"]:
            # biases and norm scales (1-D, including timm's BatchNorm `bn1.weight`) are never decayed
            assert group["weight_decay"] == (0.1 if rec.ndim[name] > 1 else 0.0), name

    before, saved = rec.states["begin"], _saved_state(result.output_dir)
    bn_buffers = {k for k in before if k.endswith(BN_BUFFERS)}
    assert bn_buffers <= _changed(before, saved)
    assert {"timm_model.conv1.0.weight", "timm_model.layer4.0.conv1.weight", "timm_model.fc.weight"} <= _changed(
        before, saved
    )


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_head_only_transformers_models_train_only_the_head(kind, tiny_recipe, text_recipe, tiny_vit_dir: Path):
    rec = Recorder()
    sections = {"transfer": {"strategy": "head_only"}, "training": {"num_train_epochs": 1}}
    if kind == "vit":
        recipe = tiny_recipe(model={"name": str(tiny_vit_dir), "config": {}}, **sections)
    else:
        recipe = text_recipe(**sections)
    result = finetune(recipe, callbacks=[rec])
    head = {"classifier.weight", "classifier.bias"}
    assert [sorted(g["params"]) for g in rec.groups] == [sorted(head)]
    assert rec.trainable["begin"] == head
    before, saved = rec.states["begin"], _saved_state(result.output_dir, text=kind == "bert")
    assert len(before) > 20
    assert _changed(before, saved) == head


def test_partial_trains_exactly_the_last_blocks_and_their_batchnorm(tiny_recipe):
    # simple_cnn with BatchNorm: conv block 0, conv block 1, dense 0 = 3 blocks; the last 2 train
    rec = Recorder()
    result = finetune(
        tiny_recipe(
            model=BN_CNN, transfer={"strategy": "partial", "unfreeze_last": 2}, training={"num_train_epochs": 1}
        ),
        callbacks=[rec],
    )
    before, saved = rec.states["begin"], _saved_state(result.output_dir)
    trained_prefixes = ("blocks.1.", "dense.0.", "classifier.")
    assert _changed(before, saved) == {k for k in before if k.startswith(trained_prefixes)}
    assert "blocks.1.norm.running_mean" in _changed(before, saved)  # a trained block's BatchNorm keeps learning
    assert {k for k in before if k.startswith("blocks.0.norm.")} == {
        f"blocks.0.norm.{s}" for s in ("weight", "bias", *BN_BUFFERS)
    }  # … and the frozen block's BatchNorm (all compared above) stayed as it was
    assert {n for g in rec.groups for n in g["params"]} == {n for n in rec.ndim if n.startswith(trained_prefixes)}


def test_lp_ft_probes_one_epoch_then_fine_tunes_the_backbone_at_a_lower_rate(tiny_recipe):
    rec = Recorder()
    lr, scale = 3e-3, 0.1
    # max_steps sets the run's length (2 epochs of ~5 steps would be 10): the switch still follows the epoch
    result = finetune(
        tiny_recipe(
            model=BN_CNN,
            transfer={"strategy": "lp_ft", "probe_epochs": 1, "fine_tune_lr_scale": scale},
            training={"num_train_epochs": 2, "max_steps": 7, "learning_rate": lr},
        ),
        callbacks=[rec],
    )
    head = {"classifier.weight", "classifier.bias"}
    everything = set(rec.ndim)
    # the optimizer knows the backbone from the start, at learning_rate × fine_tune_lr_scale; the head at lr
    assert rec.lr_of() == {n: (lr if n in head else lr * scale) for n in everything}
    assert rec.trainable["begin"] == head

    steps = rec.first_epoch_steps
    assert steps is not None and 2 <= steps < 7
    assert rec.trainable[f"step {steps}"] == head  # the probe's last step
    assert rec.trainable[f"step {steps + 1}"] == everything  # the first step after it

    begin, probed, end = rec.states["begin"], rec.states["epoch 1"], _saved_state(result.output_dir)
    assert _changed(begin, probed) == head  # backbone and BatchNorm statistics frozen during the probe
    # afterwards everything trains: every parameter moves, and BatchNorm updates its statistics again
    assert _changed(probed, end) == set(begin)


@pytest.mark.slow
def test_head_only_gets_a_probe_sized_learning_rate_unless_the_recipe_sets_one(tiny_recipe):
    rec = Recorder()
    recipe = tiny_recipe(transfer={"strategy": "head_only"}, training={"num_train_epochs": 1})
    del recipe["training"]["learning_rate"]
    result = finetune(recipe, callbacks=[rec])
    assert {g["lr"] for g in rec.groups} == {1e-3}  # not Trainer's 5e-5, which suits full fine-tuning
    saved = yaml.safe_load((result.output_dir / "recipe.yaml").read_text())
    assert saved["training"]["learning_rate"] == 1e-3  # what the toolkit chose is in the resolved recipe
    rec = Recorder()
    finetune(
        tiny_recipe(transfer={"strategy": "head_only"}, training={"num_train_epochs": 1}),
        overwrite=True,
        callbacks=[rec],
    )
    assert {g["lr"] for g in rec.groups} == {3e-3}  # the recipe's own value is honoured


@pytest.mark.slow
def test_lp_ft_starts_fine_tuning_from_the_fitted_probe_head(tiny_recipe, tmp_path: Path):
    probe = tiny_recipe(model=BN_CNN, transfer={"strategy": "linear_probe"})
    for key in ("num_train_epochs", "learning_rate", "per_device_train_batch_size"):
        del probe["training"][key]
    probe["training"]["output_dir"] = str(tmp_path / "probe")
    fitted = _saved_state(finetune(probe).output_dir)

    rec = Recorder()
    lr = 3e-3
    result = finetune(
        tiny_recipe(model=BN_CNN, transfer={"strategy": "lp_ft"}, training={"num_train_epochs": 1}), callbacks=[rec]
    )
    head = {"classifier.weight", "classifier.bias"}
    begin = rec.states["begin"]
    # same seed, same data: at the first fine-tuning step the backbone is the untouched initial one (the
    # linear_probe run saved it unchanged) and only the head differs from linear_probe's: lp_ft fits it on features
    # under one shared scale (run.probe.scaling below); test_baseline checks that fit's scores
    assert _changed(fitted, begin) == head
    assert rec.trainable["begin"] == set(rec.ndim)  # no head-only epochs: everything trains from the first step
    assert rec.lr_of() == {n: lr for n in rec.ndim}  # fine_tune_lr_scale's default 1: the recipe's rate for all
    probe_info = json.loads((result.output_dir / "metrics.json").read_text())["run"]["probe"]
    assert probe_info["C"] > 0 and probe_info["scaling"] == "global"  # a head gradient descent goes on from
    # the fitted head was fitted on features normalised with the pretrained statistics: they stay, while the
    # BatchNorm scale and shift train with the rest
    changed = _changed(begin, rec.states["end"])
    assert not {k for k in changed if k.endswith(BN_BUFFERS)}
    assert {"blocks.0.norm.weight", "blocks.1.norm.bias", "classifier.weight"} <= changed


# --------------------------------------------------------------------------------------------- model.weights


def _build(name: str, weights: str | None, **spec):
    from hf_finetune.tasks.image_classification import build_model

    return build_model(ModelSpec(name=name, weights=weights, **spec), LABELS).model


def _nontrivial_cnn(num_labels: int):
    from hf_finetune.models import SimpleCNNConfig, SimpleCNNForImageClassification

    torch.manual_seed(1)
    model = SimpleCNNForImageClassification(
        SimpleCNNConfig(image_size=16, filters=[8], dense_units=[16], batch_norm=True, num_labels=num_labels)
    )
    with torch.no_grad():  # statistics a fresh model could not have
        model.blocks[0].norm.running_mean.uniform_(-1, 1)
        model.blocks[0].norm.num_batches_tracked.fill_(7)
    return model


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_weights_file_loads_into_simple_cnn_with_a_new_head(fmt, tmp_path: Path):
    from safetensors.torch import save_file

    source = _nontrivial_cnn(num_labels=5).state_dict()
    path = tmp_path / f"ckpt.{fmt}"
    if fmt == "safetensors":
        save_file(source, path)
    else:
        torch.save({"state_dict": source, "epoch": 3}, path)  # a training checkpoint nests the weights
    model = _build(
        "simple_cnn", str(path), image_size=16, config={"filters": [8], "dense_units": [16], "batch_norm": True}
    )
    own = model.state_dict()
    assert own["classifier.weight"].shape == (3, 16)
    backbone = [k for k in source if not k.startswith("classifier.")]
    assert len(backbone) == 8 and all(torch.equal(own[k], source[k]) for k in backbone)


@pytest.mark.parametrize("saved_as", ["timm.safetensors", "wrapper.pt"])
def test_weights_file_loads_into_timm_resnet_with_a_new_head(saved_as, tmp_path: Path):
    # a bare timm model's state dict, or one saved from the TimmWrapper model (e.g. an earlier run's weights)
    import timm

    torch.manual_seed(2)
    source = timm.create_model("test_resnet", num_classes=5)
    with torch.no_grad():
        source.bn1.running_var.uniform_(0.5, 2)
    path = tmp_path / saved_as
    if saved_as == "timm.safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), path)
    else:
        from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

        wrapper = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="test_resnet", num_labels=5))
        wrapper.timm_model.load_state_dict(source.state_dict())
        torch.save(wrapper.state_dict(), path)
    model = _build("timm:test_resnet", str(path), pretrained=False, image_size=32)
    own = model.timm_model.state_dict()
    assert own["fc.weight"].shape == (3, model.timm_model.num_features)
    backbone = [k for k in source.state_dict() if not k.startswith("fc.")]
    assert len(backbone) > 50
    assert all(torch.equal(own[k], source.state_dict()[k]) for k in backbone)


def test_weights_saved_by_transformers_load_into_a_vit(tiny_vit_dir: Path):
    # save_pretrained writes ViT under its older names (vit.encoder.layer.*); the model holds vit.layers.*
    from transformers import ViTForImageClassification

    reference = ViTForImageClassification.from_pretrained(tiny_vit_dir).state_dict()
    model = _build(str(tiny_vit_dir), str(tiny_vit_dir / "model.safetensors"), pretrained=False)
    own = model.state_dict()
    assert own["classifier.weight"].shape == (3, 32)
    backbone = [k for k in reference if not k.startswith("classifier.")]
    assert any(k.startswith("vit.layers.") for k in backbone)
    assert all(torch.equal(own[k], reference[k]) for k in backbone)


def test_weights_of_another_architecture_are_refused_with_the_keys(tmp_path: Path):
    import timm
    from safetensors.torch import save_file

    resnet_file, cnn_file = tmp_path / "resnet.safetensors", tmp_path / "cnn.safetensors"
    resnet_state = timm.create_model("test_resnet", num_classes=3).state_dict()
    save_file(resnet_state, resnet_file)
    save_file(_nontrivial_cnn(num_labels=3).state_dict(), cnn_file)

    cnn = {"image_size": 16, "config": {"filters": [8], "dense_units": [16], "batch_norm": True}}
    with pytest.raises(ModelError) as err:
        _build("simple_cnn", str(resnet_file), **cnn)
    message = str(err.value)
    assert "does not fit SimpleCNNForImageClassification" in message
    # conv, BatchNorm weight/bias/statistics, dense weight/bias: 7 (the head is replaced anyway, the batch counter
    # is optional); the resnet's every tensor is unexpected
    assert "7 missing keys ['blocks.0.conv.weight', 'blocks.0.norm.weight'" in message
    assert f"{len(resnet_state)} unexpected keys ['" in message

    with pytest.raises(ModelError) as err:
        _build("timm:test_resnet", str(cnn_file), pretrained=False, image_size=32)
    message = str(err.value)
    assert "missing keys" in message and "unexpected keys" in message
    assert "conv1.0.weight" in message and "blocks.0.conv.weight" in message


def test_missing_weights_file_is_a_model_error(tmp_path: Path):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(ModelError, match="no such file"):
        _build("simple_cnn", missing, image_size=16, config={"filters": [4], "dense_units": []})
    with pytest.raises(ModelError, match="no such file"):
        _build("timm:test_resnet", missing, pretrained=False, image_size=32)
