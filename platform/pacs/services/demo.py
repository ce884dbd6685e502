from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pacs import dicomweb as dw
from pacs.demo import demo_bundles
from pacs.models import PacsSource
from pacs.services.store import pacs_store_datasets


def pacs_demo_load(
    *,
    source: PacsSource,
    shared_data: Path,
    hippocampus_limit: int | None = None,
    progress: Callable[[str], None] = lambda label: None,
) -> dict[str, int]:
    """Put the demo studies into ``source``; a study the PACS already holds in full is not sent again."""
    client = dw.client_for(source)
    present = {
        dw.value(item, dw.STUDY_UID): int(dw.value(item, dw.STUDY_NUM_INSTANCES, 0))
        for item in dw.search_studies(source, client)
    }
    counts = {"studies_sent": 0, "studies_present": 0, "instances_sent": 0}
    for bundle in demo_bundles(shared_data, hippocampus_limit=hippocampus_limit):
        progress(bundle.label)
        if present.get(bundle.study_instance_uid, 0) >= bundle.num_instances:
            counts["studies_present"] += 1
            continue
        counts["instances_sent"] += pacs_store_datasets(source=source, datasets=bundle.load())
        counts["studies_sent"] += 1
    return counts
