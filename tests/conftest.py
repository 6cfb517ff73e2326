"""Test-suite settings: offline, quiet, one generated-data cache per test session, and the helpers' path.

Tests mirror the code: ``methods/``, ``tasks/``, ``metrics/``, ``a3tune/``, ``backbones/``, ``cli/``; the
core's own tests (runner, scoring, tables, …) sit at this level; helpers are in ``support/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Shared helpers (dataset fixtures, the tiny decoding backbone, weak-label fixtures, kill points) live
# in tests/support/ and are imported by module name from tests in every folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Generated phantom data live in a per-session cache unless MEDBENCH_CACHE is set."""
    if "MEDBENCH_CACHE" not in os.environ:
        os.environ["MEDBENCH_CACHE"] = str(tmp_path_factory.mktemp("medbench-cache"))
    yield


@pytest.fixture(scope="session")
def random_backbone():
    """A randomly initialised tiny Llava with a small tokenizer (no checkpoint needed)."""
    from medbench import attention
    from medbench.backbones.base import Backbone
    from medbench.backbones.templates import TINY
    from medbench.backbones.tiny import build_random, train_tokenizer

    texts = ["is there a liver in this image? yes", "what modality is this? ct mri x-ray",
             "axial ct of the abdomen. a small lesion in the liver. no", "USER: ASSISTANT:"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    model, processor = build_random(tokenizer, seed=0)
    model.eval()
    attention.install(model)
    return Backbone(model, processor, TINY, checkpoint_id="random-test")


@pytest.fixture(scope="session")
def phantom_v3_probes():
    """The probes of phantom-vqa v3 (majority, question prior, text, location-blind, RoI-only), run once
    per session: the benchmark's gates and the shipped model's gates both compare against them."""
    from medbench.probe import run_probes
    from medbench.tasks.phantom import PhantomVQA

    return run_probes(PhantomVQA(), progress=False)
