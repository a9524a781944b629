"""Datasets, event representations and the data pipeline."""

from .build import DataBundle, DatasetInfo, build_data  # noqa: F401
