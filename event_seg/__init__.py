"""event_seg."""

import os as _os

# albumentations asks PyPI for a newer version at every import: on a machine without internet
# (cluster nodes) each run then prints "Error fetching version info". A user's own setting wins.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
