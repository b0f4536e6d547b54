"""A Hugging Face directory's preprocessor_config.json becomes the loaded model's input spec (what `vitkit
eval` / `predict` normalise with), and implausible values in it are ignored, not trusted."""

import json

import pytest

import vitkit

transformers = pytest.importorskip("transformers")


def _save_hf_vit(path, preprocessor: dict | None):
    config = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3)
    transformers.ViTForImageClassification(config).save_pretrained(path)
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))


def test_preprocessor_config_sets_the_input_spec(tmp_path):
    _save_hf_vit(tmp_path, {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.2], "crop_pct": 0.95})
    spec = vitkit.load(tmp_path).input_spec
    assert (spec.mean, spec.std, spec.crop_pct) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), 0.95)


@pytest.mark.parametrize("preprocessor", [None, {"image_mean": "red", "image_std": [0, 1, 1], "crop_pct": 7}])
def test_missing_or_implausible_preprocessing_falls_back_to_the_family(tmp_path, preprocessor):
    _save_hf_vit(tmp_path, preprocessor)
    default = vitkit.create_model("vit_pico_patch4_32").input_spec
    spec = vitkit.load(tmp_path).input_spec
    assert (spec.mean, spec.std, spec.crop_pct) == (default.mean, default.std, default.crop_pct)
