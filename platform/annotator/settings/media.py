"""The media store: volumes and masks as files, named by content. A folder by default."""

import os
from pathlib import Path

MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", Path(__file__).resolve().parents[3] / "var" / "media"))
