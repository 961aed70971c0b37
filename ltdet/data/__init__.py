"""Data: synthetic long-tailed generator, LVIS-format registration, category stats.

Importing this package registers ``synthetic_lt_train`` / ``synthetic_lt_val``
(file paths only, see ``datasets.py``). The generator is
``ltdet.data.synthetic`` (``python -m ltdet.data.synthetic``).
"""
from . import datasets  # noqa: F401  (registers the synthetic dataset's names)
from .category_stats import (
    CategoryStats,
    CategoryStatsError,
    assign_groups,
    clear_category_stats_cache,
    get_category_stats,
    group_names,
    train_category_stats,
)
from .datasets import (
    SYNTHETIC_SPLITS,
    load_lvis_format_json,
    read_lvis_categories,
    register_lvis_format_dataset,
    register_synthetic,
)

__all__ = [
    "CategoryStats",
    "CategoryStatsError",
    "SYNTHETIC_SPLITS",
    "assign_groups",
    "clear_category_stats_cache",
    "get_category_stats",
    "group_names",
    "load_lvis_format_json",
    "read_lvis_categories",
    "register_lvis_format_dataset",
    "register_synthetic",
    "train_category_stats",
]
