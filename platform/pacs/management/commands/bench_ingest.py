"""Ingest benchmark on a throw-away Orthanc: prints JSON.

Phases: (1) the shared DICOM only, full sync; (2) a synthetic CT-sized series (512x512x300 uint16,
157 MB); (3) plus N hippocampus studies; each an incremental sync of what is new; (4) re-sync of
the unchanged PACS. Throughput counts the DICOM bytes Orthanc stores
for the phase, retrieved over WADO-RS and built into NIfTI volumes in a temporary media store.
One process per core (series_ingest_many), as `manage.py pacs_sync` runs it.
"""

import json
import os
import platform as host
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from ml_worker.io.nifti_to_dicom import array_to_dicom_series
from pacs.demo import DICOM_FOLDERS, StudyBundle, dicom_file_bundles, hippocampus_bundles
from pacs.models import PacsSource
from pacs.orthanc import OrthancServer
from pacs.services.ingest import series_ingest_many
from pacs.services.store import pacs_store_datasets
from pacs.services.sync import pacs_source_sync
from studies.models import Study, Volume


class Command(BaseCommand):
    help = "Measure PACS ingest (MB/s retrieval+build, full and incremental sync) on a throw-away Orthanc."

    def add_arguments(self, parser):
        parser.add_argument("--shared-data", type=Path, default=os.environ.get("ANNOTATOR_SHARED_DATA"))
        parser.add_argument("--hippocampus", type=int, default=200, help="Hippocampus studies to add.")

    def handle(self, *args, shared_data, hippocampus, **options):
        shared_data = Path(shared_data or settings.REPO_DIR.parent / "shared" / "data")
        scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
        media_before = settings.MEDIA_ROOT
        settings.MEDIA_ROOT = scratch / "media"
        server = OrthancServer(storage=scratch / "orthanc").start()
        source = PacsSource.objects.create(
            name=f"Benchmark {scratch.name}",
            base_url=server.base_url,
            username=server.username,
            password=server.password,
            enabled=False,
        )
        try:
            report = {
                "device": "cpu",
                "cpus": os.cpu_count(),
                "machine": host.machine(),
                "torch": torch.__version__,
            }
            shared = list(dicom_file_bundles([shared_data / name for name in DICOM_FOLDERS]))
            report["shared_dicom"] = self._phase(server, source, shared)
            report["ct_sized_512x512x300"] = self._phase(server, source, [_ct_sized_bundle()])
            hippo = list(hippocampus_bundles(shared_data / "hippocampus", limit=hippocampus))
            report["hippocampus"] = self._phase(server, source, hippo)
            start = time.perf_counter()
            resync = pacs_source_sync(source_id=source.id)
            report["resync_unchanged"] = {
                "seconds": round(time.perf_counter() - start, 3),
                "studies_in_pacs": resync.studies_seen,
                "studies_examined": resync.studies_examined,
                "series_to_ingest": len(resync.series_to_ingest),
            }
            self.stdout.write(json.dumps(report, indent=2))
        finally:
            with transaction.atomic():
                Study.objects.filter(source=source).delete()
                source.delete()
            server.stop()
            settings.MEDIA_ROOT = media_before
            shutil.rmtree(scratch, ignore_errors=True)

    def _phase(self, server, source, bundles) -> dict:
        size_before = self._stored_bytes(server)
        start = time.perf_counter()
        for bundle in bundles:
            pacs_store_datasets(source=source, datasets=bundle.load())
        store_s = time.perf_counter() - start
        mb = (self._stored_bytes(server) - size_before) / 1e6

        start = time.perf_counter()
        result = pacs_source_sync(source_id=source.id)
        discover_s = time.perf_counter() - start
        start = time.perf_counter()
        series_ingest_many(series_ids=result.series_to_ingest)
        ingest_s = time.perf_counter() - start
        volumes = Volume.objects.filter(series_id__in=result.series_to_ingest)
        return {
            "studies": len(bundles),
            "dicom_mb": round(mb, 2),
            "stow_seconds": round(store_s, 2),
            "discover_seconds": round(discover_s, 3),
            "series_ingested": len(result.series_to_ingest),
            "volumes": volumes.count(),
            "ingest_seconds": round(ingest_s, 2),
            "retrieve_build_mb_per_s": round(mb / ingest_s, 1) if ingest_s else None,
            "sync_seconds": round(discover_s + ingest_s, 2),
        }

    @staticmethod
    def _stored_bytes(server: OrthancServer) -> int:
        stats = requests.get(
            f"http://127.0.0.1:{server.port}/statistics", auth=server.auth, timeout=10
        ).json()
        return int(stats["TotalDiskSize"])


def _ct_sized_bundle() -> StudyBundle:
    def load():
        rng = np.random.default_rng(0)
        array = rng.integers(0, 4096, size=(512, 512, 300), dtype=np.uint16)
        affine = np.diag([0.7, 0.7, 1.0, 1.0])
        return array_to_dicom_series(
            array,
            affine,
            key="bench-ct-sized",
            patient_id="BENCH-CT",
            patient_name="Bench^CT",
            study_description="Benchmark CT-sized",
            series_description="512x512x300",
        )

    return StudyBundle("", 300, "ct-sized", load)
