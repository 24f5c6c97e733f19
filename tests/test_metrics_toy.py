"""``Q_TOY``: the toy metric, by hand and through the registry."""

from __future__ import annotations

import numpy as np

from pipeline.metrics import compute_metrics, get_spec
from pipeline.metrics.toy import q_toy


def test_q_toy() -> None:
    a, b = np.zeros((4, 4)), np.full((4, 4), 10.0)
    f = np.full((4, 4), 4.0)
    assert q_toy(a, b, f) == 5.0
    assert compute_metrics(a, b, f, ["Q_TOY"]) == {"Q_TOY": 5.0}
    assert not get_spec("Q_TOY").higher_is_better
