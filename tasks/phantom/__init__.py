"""Phantom: the embedded tier's synthetic benchmark (``phantom-vqa`` and ``phantom-report``).

A deterministic, versioned generator of medical-like images (axial CT of the abdomen, axial or
coronal brain MRI, frontal chest X-ray) with SLAKE-like questions and radiology-style reports, each
question with a pixel-level, question-dependent ground-truth RoI mask.

Modules: :mod:`.draw` (drawing primitives and artefacts shared by every version), :mod:`.v3` (the
current generator: anatomy, questions, reports, finding labels), :mod:`.v2` (the frozen previous
generator, for old result files), :mod:`.cache` (build, verify, rebuild) and :mod:`.tasks` (the
two tasks).
"""

from medbench.tasks.phantom.cache import (
    CURRENT_VERSION,
    SPLITS,
    SPLITS_BY_VERSION,
    VERSIONS,
    PhantomConfig,
    ensure_split,
)
from medbench.tasks.phantom.common import QA, REPORT_PROMPTS
from medbench.tasks.phantom.tasks import DEFAULT_IMAGES, QUESTIONS_PER_IMAGE, PhantomReport, PhantomVQA

GENERATOR_VERSION = CURRENT_VERSION

__all__ = [
    "CURRENT_VERSION", "DEFAULT_IMAGES", "GENERATOR_VERSION", "QA", "QUESTIONS_PER_IMAGE", "REPORT_PROMPTS",
    "SPLITS", "SPLITS_BY_VERSION", "VERSIONS", "PhantomConfig", "PhantomReport", "PhantomVQA", "ensure_split",
]
