"""Fixed hash splits of a labelled set: the same parts on every run and machine, whatever order the
files are listed in. ``train --test-fraction`` holds out the ``test`` part, and ``peft-compare`` and
``al-simulate`` test on it, so their numbers are on the cases a trained net never saw (``effort-simulate``
orders by its own salt).

The salt keeps its historical name: changing it would move every case to another part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["order_key", "partition"]


def order_key(case_id: str, salt: str) -> bytes:
    return hashlib.sha256(f"{salt}{case_id}".encode()).digest()


def partition(
    case_ids: Sequence[str],
    *,
    test_fraction: float,
    source_fraction: float,
    salt: str = "peft-compare",
) -> dict[str, list[str]]:
    """Fixed ``test`` / ``source`` / ``pool`` parts of `case_ids`, ordered by a salted hash of the ids:

    test    the first ``test_fraction`` of the order (at least one case)
    source  the next ``source_fraction``
    pool    the rest, in that order.

    Raises:
        ValueError: fractions outside [0, 1) or summing to 1 or more, or an empty test part.
    """
    if not (0 < test_fraction < 1 and 0 <= source_fraction < 1 and test_fraction + source_fraction < 1):
        raise ValueError(
            "test_fraction must be in (0, 1), source_fraction in [0, 1), their sum < 1; "
            f"got {test_fraction}, {source_fraction}"
        )
    order = sorted(case_ids, key=lambda c: order_key(c, salt))
    n_test = max(1, round(len(order) * test_fraction))
    n_source = round(len(order) * source_fraction)
    return {
        "test": order[:n_test],
        "source": order[n_test : n_test + n_source],
        "pool": order[n_test + n_source :],
    }
