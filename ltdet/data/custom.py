"""Bring your own long-tailed dataset: registration from config and setup checks.

``LTDET.DATASETS.REGISTER`` lists ``[name, format, json_file, image_root]``
entries; ``register_from_config(cfg)`` registers them before the trainer runs:

- ``"coco"``: any COCO-format json (category ids may be arbitrary) through
  detectron2's ``load_coco_json``; evaluated with ``COCOEvaluator``
  (plus APr/APc/APf and AP1..AP5 from the training split's image counts).
- ``"lvis"``: an LVIS-format json with category ids 1..C through
  ``register_lvis_format_dataset``; evaluated with the ``lvis`` API, so a test
  json needs each category's ``frequency`` and each image's
  ``neg_category_ids`` / ``not_exhaustive_category_ids``. Image paths are
  ``<image_root>/<last two components of coco_url>``, as detectron2's LVIS loader.

Then the datasets named in ``DATASETS.TRAIN`` / ``DATASETS.TEST`` are checked:
registered, files present (naming the missing file), and the same categories
(ids and names) in the training and test splits. ``check_num_classes(cfg)``
compares the model's number of classes with the dataset's.

Example (YAML, or the same value on the command line as
``LTDET.DATASETS.REGISTER "[('my_train', 'coco', 'train.json', 'images')]"``)::

    LTDET:
      DATASETS:
        REGISTER:
          - ["my_train", "coco", "/data/my/train.json", "/data/my/images"]
          - ["my_val", "coco", "/data/my/val.json", "/data/my/images"]
    DATASETS:
      TRAIN: ("my_train",)
      TEST: ("my_val",)
"""
import functools
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .category_stats import clear_category_stats_cache
from .datasets import SYNTHETIC_LVIS_SPLITS, SYNTHETIC_SPLITS, drop_invalid_boxes, read_lvis_categories, register_lvis_format_dataset

__all__ = [
    "FORMATS",
    "check_categories",
    "check_dataset_files",
    "check_num_classes",
    "dataset_categories",
    "num_classes_key",
    "register_dataset",
    "register_from_config",
]

logger = logging.getLogger(__name__)

#: Supported annotation formats of ``LTDET.DATASETS.REGISTER`` entries.
FORMATS = ("coco", "lvis")
#: Config key holding the number of foreground classes, per meta-architecture
#: (any other architecture but ``ProposalNetwork``: ``MODEL.ROI_HEADS.NUM_CLASSES``).
_NUM_CLASSES_KEYS = {
    "LongTailATSS": "MODEL.LTDET_DENSE.NUM_CLASSES",
    "RetinaNet": "MODEL.RETINANET.NUM_CLASSES",
    "ProposalNetwork": None,
}


def _expand(path):
    return os.path.expandvars(os.path.expanduser(path))


def _used_datasets(cfg, eval_only):
    """(name, required) for the datasets of a run; training sets are optional with ``eval_only``."""
    used = [(name, not eval_only) for name in cfg.DATASETS.TRAIN]
    return used + [(name, True) for name in cfg.DATASETS.TEST]


def register_dataset(name, fmt, json_file, image_root):
    """Register one dataset (a name registered before is replaced, cached statistics dropped).

    Args:
        name (str): dataset name to use in ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        fmt (str): "coco" or "lvis".
        json_file (str): annotation json (``~`` and ``$VARS`` are expanded).
        image_root (str): image directory (``~`` and ``$VARS`` are expanded).
    """
    if fmt not in FORMATS:
        raise ValueError(f"dataset '{name}': format must be one of {FORMATS}, got {fmt!r}")
    json_file, image_root = _expand(json_file), _expand(image_root)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    if fmt == "coco":
        # as detectron2's register_coco_instances, with invalid boxes dropped (logged)
        DatasetCatalog.register(
            name, functools.partial(_load_coco_format_json, json_file, image_root, name)
        )
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")
    else:
        register_lvis_format_dataset(name, json_file, image_root)
    MetadataCatalog.get(name).set(ltdet_format=fmt)
    clear_category_stats_cache()


def _load_coco_format_json(json_file, image_root, name):
    return drop_invalid_boxes(load_coco_json(json_file, image_root, name), json_file)


def _parse_entry(entry):
    if not isinstance(entry, (list, tuple)) or len(entry) != 4 or not all(isinstance(v, str) for v in entry):
        raise ValueError(
            "each LTDET.DATASETS.REGISTER entry must be [name, format, json_file, image_root] "
            f"(four strings), got {entry!r}"
        )
    return tuple(entry)


def register_from_config(cfg, eval_only=False):
    """Register ``LTDET.DATASETS.REGISTER`` and check the run's datasets.

    Call after merging the config (``train_net.py`` ``setup()`` does). Checks
    (see ``check_dataset_files`` and ``check_categories``) cover every dataset
    in ``DATASETS.TRAIN`` / ``DATASETS.TEST``, builtin ones included.

    Args:
        cfg (CfgNode): the merged config.
        eval_only (bool): the run only evaluates, so the training sets' files
            may be absent (group APs are then skipped).

    Returns:
        list[str]: the registered names.
    """
    names = []
    for entry in cfg.LTDET.DATASETS.REGISTER:
        name, fmt, json_file, image_root = _parse_entry(entry)
        register_dataset(name, fmt, json_file, image_root)
        names.append(name)
    if names:
        logger.info(f"Registered datasets from LTDET.DATASETS.REGISTER: {names}")
    check_dataset_files(cfg, eval_only=eval_only)
    check_categories(cfg, eval_only=eval_only)
    return names


def check_dataset_files(cfg, eval_only=False):
    """Raise a clear error for an unregistered dataset or a missing file.

    Args:
        cfg (CfgNode): the merged config.
        eval_only (bool): skip the training sets' checks.

    Raises:
        KeyError: a dataset name is not registered.
        FileNotFoundError: a dataset's ``json_file`` or ``image_root`` is missing
            (the message names the file).
    """
    for name, required in _used_datasets(cfg, eval_only):
        if not required:
            continue
        if name not in DatasetCatalog.list():
            raise KeyError(
                f"dataset '{name}' is not registered: add it to LTDET.DATASETS.REGISTER "
                "(see datasets/README.md) or use a builtin name"
            )
        meta = MetadataCatalog.get(name)
        for key, exists in (("json_file", os.path.isfile), ("image_root", os.path.isdir)):
            path = meta.get(key, None)
            if path is not None and not exists(path):
                hint = (
                    "; generate it with `python -m ltdet.data.synthetic`" if name in SYNTHETIC_SPLITS
                    else "; generate it with `python -m ltdet.data.synthetic_lvis`" if name in SYNTHETIC_LVIS_SPLITS
                    else " (see datasets/README.md)"
                )
                raise FileNotFoundError(f"dataset '{name}': {key} not found: {path}{hint}")


def dataset_categories(name):
    """Categories of a registered dataset, without loading its dicts.

    Args:
        name (str): a registered dataset name.

    Returns:
        list[tuple] or None: ``(id, name)`` per category sorted by id, from the
        json (when the metadata has no ``thing_classes`` yet); ``(None, name)``
        from ``thing_classes``; None when neither is available.
    """
    meta = MetadataCatalog.get(name)
    thing_classes = meta.get("thing_classes", None)
    if thing_classes is not None:
        return [(None, c) for c in thing_classes]
    json_file = meta.get("json_file", None)
    if json_file is None or not os.path.isfile(json_file):
        return None
    try:
        categories, _ = read_lvis_categories(json_file)
    except KeyError as e:
        raise ValueError(f"dataset '{name}': {json_file} has no {e} list") from None
    if meta.get("ltdet_format", None) == "lvis":
        ids = [c["id"] for c in categories]
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError(
                f"dataset '{name}': LVIS-format category ids must be 1..{len(ids)} "
                f"(got {ids[:5]}...); register it with format 'coco' for arbitrary ids"
            )
    return [(c["id"], c["name"]) for c in categories]


def _first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"category #{i}: {x} vs {y}"
    return f"{len(a)} vs {len(b)} categories"


def check_categories(cfg, eval_only=False):
    """Raise a ``ValueError`` if the training and test splits' categories differ.

    Compares ``DATASETS.TRAIN[0]`` with every other dataset of the run: ids and
    names when both come from json files, names otherwise. Datasets whose
    categories are unknown (see ``dataset_categories``) are skipped. An
    LVIS-format test split must give each category a ``frequency`` (the
    ``lvis`` API's APr/APc/APf).

    Args:
        cfg (CfgNode): the merged config.
        eval_only (bool): a missing training json is not an error.
    """
    known = []
    for name, _ in _used_datasets(cfg, eval_only):
        if name not in DatasetCatalog.list():
            continue
        categories = dataset_categories(name)
        if categories is not None:
            known.append((name, categories))
    for name in cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name) if name in DatasetCatalog.list() else None
        if meta is not None and meta.get("ltdet_format", None) == "lvis" and os.path.isfile(meta.json_file):
            missing = [c["name"] for c in read_lvis_categories(meta.json_file)[0] if "frequency" not in c]
            if missing:
                raise ValueError(
                    f"dataset '{name}': the lvis evaluator needs each category's 'frequency' "
                    f"(r/c/f), missing for {missing[:5]}; register it with format 'coco' instead"
                )
    if len(known) < 2:
        return
    ref_name, ref = known[0]
    for name, categories in known[1:]:
        with_ids = bool(ref and categories) and ref[0][0] is not None and categories[0][0] is not None
        a = ref if with_ids else [n for _, n in ref]
        b = categories if with_ids else [n for _, n in categories]
        if a != b:
            raise ValueError(
                f"datasets '{ref_name}' and '{name}' have different categories "
                f"({'ids and names' if with_ids else 'names'}; first difference: {_first_difference(a, b)}); "
                "the training and test splits must share one category list"
            )


def num_classes_key(cfg):
    """The config key of the model's number of foreground classes (None if it has none)."""
    return _NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE, "MODEL.ROI_HEADS.NUM_CLASSES")


def check_num_classes(cfg):
    """Raise a ``ValueError`` if the model's number of classes is not the dataset's.

    The key is ``MODEL.ROI_HEADS.NUM_CLASSES`` for R-CNN models and
    ``MODEL.LTDET_DENSE.NUM_CLASSES`` for ATSS (``num_classes_key``); the count
    is that of the first dataset of ``DATASETS.TRAIN`` + ``DATASETS.TEST``
    whose categories are known (``dataset_categories``).

    Args:
        cfg (CfgNode): the merged config.
    """
    key = num_classes_key(cfg)
    if key is None:
        return
    value = functools.reduce(getattr, key.split("."), cfg)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if name not in DatasetCatalog.list():
            continue
        categories = dataset_categories(name)
        if categories is None:
            continue
        if len(categories) != value:
            raise ValueError(
                f"{key} = {value} but dataset '{name}' has {len(categories)} categories: "
                f"set {key} {len(categories)}"
            )
        return
