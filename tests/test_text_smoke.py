"""Smoke: the text path end to end on a tiny BERT (the full text suite lives in test_text.py)."""

import json

from hf_finetune import finetune, predict


def test_tiny_bert_end_to_end(text_recipe):
    from transformers import pipeline

    result = finetune(text_recipe())
    out = result.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label_names"] == ["negative", "neutral", "positive"]
    assert metrics["test"]["num_samples"] == 30
    assert metrics["test"]["baseline"]["majority_class"] in metrics["label_names"]
    classifier = pipeline("text-classification", model=str(out), top_k=None)
    piped = classifier(["a great and lovely ride"])[0]
    ours = predict(out, ["a great and lovely ride"], top_k=3)[0]["predictions"]
    assert [p["label"] for p in sorted(piped, key=lambda p: -p["score"])] == [p["label"] for p in ours]
