"""Linear probes on a backbone's frozen visual tokens: does the vision side encode lesions at all?

Phantom v3 images are rendered in memory (``train`` split for fitting, ``test`` split for
scoring, so no image is in both), passed through the vision tower and projector (the visual tokens
the language model sees) and two logistic regressions (standardised features, balanced class
weights) are fitted:

* **image**: lesion anywhere in the image, from the mean of the image's visual tokens;
* **cell**: lesion occupancy of each grid cell (:func:`medbench.vision_targets.lesion_cells`:
  lesion pixels cover at least 10 % of the cell), from that cell's visual token.

Both are scored by balanced accuracy (the mean of the recall of each class: 0.5 for any constant
or uninformed predictor) on the held-out images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ProbeConfig:
    n_train: int = 600
    n_test: int = 250
    data_seed: int = 0
    batch_size: int = 32
    c: float = 1.0
    max_iter: int = 2000


def visual_tokens(backbone: Any, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """The projected visual tokens of each image, ``[N, G*G, D]`` float32."""
    import torch
    from PIL import Image

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = [Image.fromarray(im) for im in images[start:start + batch_size]]
            pixels = backbone.pixel_values(chunk).to(backbone.device, next(backbone.model.parameters()).dtype)
            feats = backbone.model.get_image_features(pixel_values=pixels).pooler_output
            out.append(torch.stack(list(feats)).float().cpu().numpy())
    return np.concatenate(out)


def fit_score(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              c: float = 1.0, max_iter: int = 2000) -> dict[str, Any]:
    """Logistic regression on standardised features; balanced accuracy on the test rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(y_train.tolist())) < 2 or len(set(y_test.tolist())) < 2:
        raise ValueError("a probe needs both classes in its train and test rows; use more images")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, class_weight="balanced"))
    clf.fit(x_train, y_train)
    pred = clf.predict(x_test)
    return {"balanced_accuracy": round(float(balanced_accuracy_score(y_test, pred)), 4),
            "train_accuracy": round(float(balanced_accuracy_score(y_train, clf.predict(x_train))), 4),
            "n_train": int(len(y_train)), "n_test": int(len(y_test)),
            "test_positive_rate": round(float(np.mean(y_test)), 4)}


def probe_set(backbone: Any, split: str, n: int, config: ProbeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visual tokens ``[n, G*G, D]``, image labels ``[n]`` and cell labels ``[n, G*G]`` of ``n`` images."""
    from medbench.vision_targets import cell_targets, render

    grid = backbone.grid_size
    images, image_labels, cell_labels = [], [], []
    for index in range(n):
        rendered = render(config.data_seed, split, index)
        targets = cell_targets(rendered, grid)
        images.append(rendered.image)
        image_labels.append(targets.lesion_image)
        cell_labels.append(targets.lesion.reshape(-1))
    tokens = visual_tokens(backbone, images, config.batch_size)
    return tokens, np.array(image_labels, dtype=np.int64), np.array(cell_labels, dtype=np.int64)


def linear_probe(backbone: Any, config: ProbeConfig = ProbeConfig()) -> dict[str, Any]:
    """Image-level lesion presence and per-cell lesion occupancy probes (see the module doc)."""
    from medbench.vision_targets import LESION_CELL_FRACTION, PHANTOM_VERSION, generator_source

    x_train, yi_train, yc_train = probe_set(backbone, "train", config.n_train, config)
    x_test, yi_test, yc_test = probe_set(backbone, "test", config.n_test, config)
    dim = x_train.shape[-1]
    image = fit_score(x_train.mean(axis=1), yi_train, x_test.mean(axis=1), yi_test, config.c, config.max_iter)
    cell = fit_score(x_train.reshape(-1, dim), yc_train.reshape(-1), x_test.reshape(-1, dim), yc_test.reshape(-1),
                     config.c, config.max_iter)
    return {"model": backbone.checkpoint_id, "phantom_version": PHANTOM_VERSION,
            "phantom_source": generator_source()[:16], "grid": backbone.grid_size,
            "token_dim": int(dim), "cell_rule": f"lesion pixels >= {LESION_CELL_FRACTION:.0%} of the cell",
            "config": asdict(config), "image_lesion": image, "cell_lesion": cell}
