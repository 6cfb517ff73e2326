"""Named model → local path registry: environment, YAML file, search roots, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from medbench.backbones import local_models as lm


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(lm.ENV_PREFIX) or key in (lm.ENV_FILE, lm.ENV_ROOTS):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def test_env_var_names() -> None:
    assert lm.env_var("llava-med-v1.5") == "MEDBENCH_MODELS_LLAVA_MED_V1_5"
    assert lm.env_var("openai/clip-vit-large-patch14-336") == "MEDBENCH_MODELS_OPENAI_CLIP_VIT_LARGE_PATCH14_336"


def test_missing_name_error_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(lm.MedbenchModelError) as err:
        lm.resolve("llava-med-v1.5")
    text = str(err.value)
    assert "MEDBENCH_MODELS_LLAVA_MED_V1_5" in text and "models.yaml" in text and lm.ENV_ROOTS in text
    assert "never downloads" in text and "medbench convert llava-med-v1.5" in text


def test_precedence_env_then_file_then_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "xdg" / "medbench" / "models.yaml"
    a, b, root = tmp_path / "a", cfg.parent / "b", tmp_path / "zoo"
    for d in (a, b, root / "huatuogpt-vision-7b", root / "openai" / "clip-vit-large-patch14"):
        d.mkdir(parents=True)
    cfg.write_text("models:\n  llava-med-v1.5: b\n  llava-med-v1: /nonexistent/dir\n")
    monkeypatch.setenv(lm.ENV_ROOTS, str(root))
    assert lm.resolve("llava-med-v1.5") == cfg.parent / "b"
    monkeypatch.setenv("MEDBENCH_MODELS_LLAVA_MED_V1_5", str(a))
    assert lm.resolve("llava-med-v1.5") == a
    assert lm.resolve("huatuogpt-vision-7b") == root / "huatuogpt-vision-7b"
    assert lm.resolve("openai/clip-vit-large-patch14") == root / "openai" / "clip-vit-large-patch14"
    with pytest.raises(lm.MedbenchModelError, match="not a directory"):
        lm.resolve("llava-med-v1")


def test_models_file_override_and_flat_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    f = tmp_path / "elsewhere.yaml"
    f.write_text(f"my-llava: {tmp_path / 'm'}\n")
    monkeypatch.setenv(lm.ENV_FILE, str(f))
    assert lm.config_file() == f
    assert lm.resolve("my-llava") == tmp_path / "m"
    assert lm.resolve_path_or_name(str(tmp_path / "m")) == tmp_path / "m"
    f.write_text("- not a mapping\n")
    with pytest.raises(lm.MedbenchModelError, match="mapping"):
        lm.resolve("my-llava")


def test_load_backbone_named_model_without_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from medbench.models import load_backbone
    from medbench.registry import UnknownNameError

    with pytest.raises(lm.MedbenchModelError, match="MEDBENCH_MODELS_HUATUOGPT_VISION_7B"):
        load_backbone("huatuogpt-vision-7b")
    with pytest.raises(UnknownNameError):
        load_backbone("llava-med-v2")


def test_cli_prints_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    from medbench.cli import main

    rc = main(["convert", "llava-med-v1.5", "/nonexistent/src", "/nonexistent/dst"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("medbench: error:") and "llava_mistral" in err
