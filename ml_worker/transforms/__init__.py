"""Preprocessing of volumes for the models (MONAI transforms) and its exact inverse onto the source grid.

``preprocessing(...)`` builds the Compose every model runs first; ``to_source_grid(...)`` maps a model's
output back onto the source voxel grid of :mod:`ml_worker.io.volume`, where masks are stored and exported.
"""

from ml_worker.transforms.geometry import (
    SHEAR_TOL,
    Deshear,
    Desheard,
    ToMetaTensor,
    ToMetaTensord,
    deshear_grid,
    is_sheared,
)
from ml_worker.transforms.intensity import CT_WINDOWS, ModalityIntensity, ModalityIntensityd
from ml_worker.transforms.pipeline import preprocessing, to_source_grid

__all__ = [
    "CT_WINDOWS",
    "SHEAR_TOL",
    "Deshear",
    "Desheard",
    "ModalityIntensity",
    "ModalityIntensityd",
    "ToMetaTensor",
    "ToMetaTensord",
    "deshear_grid",
    "is_sheared",
    "preprocessing",
    "to_source_grid",
]
