"""Named model → local directory (medbench never downloads weights).

A name (a registered backbone such as ``llava-med-v1.5``, or a hub-style name found inside a
checkpoint's config such as ``openai/clip-vit-large-patch14-336``) resolves, first match wins:

1. the environment variable ``MEDBENCH_MODELS_<NAME>``, where ``<NAME>`` is the name upper-cased
   with every run of other characters than ``A-Z0-9`` replaced by ``_``
   (``MEDBENCH_MODELS_LLAVA_MED_V1_5``, ``MEDBENCH_MODELS_OPENAI_CLIP_VIT_LARGE_PATCH14_336``);
2. the YAML file ``$MEDBENCH_MODELS_FILE``, else ``$XDG_CONFIG_HOME/medbench/models.yaml``
   (``~/.config/medbench/models.yaml``): a mapping ``name: path`` (optionally under a ``models:``
   key); relative paths are relative to the file;
3. ``<root>/<name>`` for each directory root in ``MEDBENCH_MODEL_PATHS`` (``os.pathsep``-separated).

A name that is configured but points at a missing directory, or that is not configured at all,
raises :class:`MedbenchModelError` naming every place it may be put.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

ENV_PREFIX = "MEDBENCH_MODELS_"
ENV_FILE = "MEDBENCH_MODELS_FILE"
ENV_ROOTS = "MEDBENCH_MODEL_PATHS"

LAYOUTS: dict[str, str] = {
    "llava-med-v1": "a folder converted by `medbench convert llava-med-v1 DELTA DST --base LLAMA_7B` "
    "(config.json model_type llava, model*.safetensors, tokenizer files)",
    "llava-med-v1.5": "a LlavaForConditionalGeneration folder: `medbench convert llava-med-v1.5 SRC DST` output "
    "or a -hf conversion (config.json model_type llava, model*.safetensors, tokenizer files)",
    "huatuogpt-vision-7b": "a LlavaForConditionalGeneration folder: `medbench convert huatuogpt-vision-7b SRC DST` "
    "output or HuatuoGPT-Vision-7B-hf (config.json model_type llava, model*.safetensors, tokenizer files)",
    "openai/clip-vit-large-patch14": "a local copy of the CLIP ViT-L/14 (224 px) repository "
    "(config.json, model.safetensors or pytorch_model.bin)",
    "openai/clip-vit-large-patch14-336": "a local copy of the CLIP ViT-L/14-336 repository "
    "(config.json, model.safetensors or pytorch_model.bin)",
}


class MedbenchModelError(FileNotFoundError):
    """A model that is not available locally or not laid out as expected; the message says what to do."""


def env_var(name: str) -> str:
    """The environment variable that maps ``name`` to a directory."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


def config_file() -> Path:
    """The YAML registry file medbench reads (it may not exist)."""
    if os.environ.get(ENV_FILE):
        return Path(os.environ[ENV_FILE]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "medbench" / "models.yaml"


def _file_entries() -> dict[str, Path]:
    path = config_file()
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MedbenchModelError(f"{path}: not valid YAML ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("models"), dict):
        data = data["models"]
    if not isinstance(data, dict):
        raise MedbenchModelError(f"{path}: expected a mapping of model name: local path")
    out = {}
    for key, value in data.items():
        p = Path(str(value)).expanduser()
        out[str(key)] = p if p.is_absolute() else path.parent / p
    return out


def _roots() -> list[Path]:
    raw = os.environ.get(ENV_ROOTS, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p]


def configured(name: str) -> tuple[Path, str] | None:
    """``(path, where it was configured)`` for ``name``, or ``None``; the path may not exist."""
    var = env_var(name)
    if os.environ.get(var):
        return Path(os.environ[var]).expanduser(), f"${var}"
    entries = _file_entries()
    if name in entries:
        return entries[name], str(config_file())
    for root in _roots():
        candidate = root / name
        if candidate.is_dir():
            return candidate, f"${ENV_ROOTS}"
    return None


def how_to_configure(name: str) -> str:
    """Where a user may put the local path of ``name``."""
    layout = LAYOUTS.get(name, "a local model folder (config.json and weights)")
    return (f"Expected {layout}. Tell medbench where it is with one of: `export {env_var(name)}=/path/to/dir`; "
            f"a line `{name}: /path/to/dir` in {config_file()}; or a folder `<root>/{name}` with "
            f"`export {ENV_ROOTS}=<root>`. medbench never downloads weights.")


def resolve(name: str) -> Path:
    """The existing local directory of ``name``; a clear :class:`MedbenchModelError` otherwise."""
    found = configured(name)
    if found is None:
        raise MedbenchModelError(f"model {name!r} has no local path. {how_to_configure(name)}")
    path, where = found
    if not path.is_dir():
        raise MedbenchModelError(f"model {name!r} is mapped to {path} (by {where}), which is not a directory. "
                                 f"{how_to_configure(name)}")
    return path


def resolve_path_or_name(name_or_path: str | os.PathLike) -> Path:
    """An existing directory as is; otherwise a configured name."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    return resolve(str(name_or_path))
