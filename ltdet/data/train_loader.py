"""A training data loader whose stream is a pure function of (seed, rank, iteration).

detectron2's loader cannot resume exactly: its sampler restarts from the seed,
``AspectRatioGroupedDataset`` keeps half-filled buckets in memory, and the
augmentations draw from each worker's global RNG, whose state depends on the
worker count and on what the worker mapped before. Here:

* a sampler (detectron2's ``TrainingSampler`` / ``RepeatFactorTrainingSampler``
  / ``RandomSubsetTrainingSampler``, or ltdet's ``ClassBalancedTrainingSampler``)
  gives this rank's infinite index stream from a seed;
* :class:`GroupedBatchKeys` forms the batches from the stream, grouping by
  aspect ratio (the records' ``width`` / ``height``, the same rule as
  ``AspectRatioGroupedDataset``) when asked, and names every sample by a key
  ``(iteration, slot, index)``;
* :class:`KeyedMapDataset` maps a key with numpy's, Python's and torch's global
  RNGs seeded from (seed, rank, iteration, slot) and restored afterwards, so an
  augmentation depends only on the key;
* a DataLoader with this batch sampler delivers batches in order.

Starting at iteration k replays the index stream of the first k batches
(integers only, no image is read), so ``--resume`` yields exactly the batches
and augmentations of the uninterrupted run, for any ``DATALOADER.NUM_WORKERS``.
The seed is ``SEED`` (or a random seed shared by the processes) and is saved in
the trainer's checkpoint.

Data errors are named: a training set without annotations is refused, and a
failure while reading or mapping an image names its file.

Shape shorthand: B images per batch on this rank.
"""
import contextlib
import logging
import random
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.data import samplers as d2_samplers
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from .samplers import ClassBalancedTrainingSampler

__all__ = [
    "GroupedBatchKeys",
    "KeyedMapDataset",
    "NamedFileMapper",
    "ResumableTrainLoader",
    "TRAIN_SAMPLERS",
    "build_resumable_train_loader",
    "build_train_sampler",
    "seeded_global_rng",
]

logger = logging.getLogger(__name__)

Key = Tuple[int, int, int]


def _repeat_factor_sampler(cfg, dicts, seed):
    factors = d2_samplers.RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        dicts, cfg.DATALOADER.REPEAT_THRESHOLD
    )
    return d2_samplers.RepeatFactorTrainingSampler(factors, seed=seed)


#: ``DATALOADER.SAMPLER_TRAIN`` -> fn(cfg, dataset_dicts, seed) -> Sampler of this rank's indices.
TRAIN_SAMPLERS: Dict[str, Callable] = {
    "TrainingSampler": lambda cfg, dicts, seed: d2_samplers.TrainingSampler(len(dicts), seed=seed),
    "RepeatFactorTrainingSampler": _repeat_factor_sampler,
    "ClassBalancedTrainingSampler": lambda cfg, dicts, seed: ClassBalancedTrainingSampler(dicts, seed=seed),
}
if hasattr(d2_samplers, "RandomSubsetTrainingSampler"):
    TRAIN_SAMPLERS["RandomSubsetTrainingSampler"] = lambda cfg, dicts, seed: d2_samplers.RandomSubsetTrainingSampler(
        len(dicts), cfg.DATALOADER.RANDOM_SUBSET_RATIO, seed_shuffle=seed, seed_subset=seed
    )


def build_train_sampler(cfg, dataset_dicts: List[Dict], seed: int) -> Sampler:
    """The ``DATALOADER.SAMPLER_TRAIN`` sampler over ``dataset_dicts`` (ValueError naming the choices)."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name not in TRAIN_SAMPLERS:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN = {name!r} is unknown; choose one of {sorted(TRAIN_SAMPLERS)}")
    return TRAIN_SAMPLERS[name](cfg, dataset_dicts, seed)


@contextlib.contextmanager
def seeded_global_rng(seed_words: Sequence[int]):
    """Seed numpy's, Python's and torch's (CPU) global RNGs from ``seed_words``; restore them after."""
    np_state, py_state = np.random.get_state(), random.getstate()
    seed = np.random.SeedSequence([int(w) for w in seed_words]).generate_state(2)
    with torch.random.fork_rng(devices=[]):
        np.random.seed(int(seed[0]))
        random.seed(int(seed[1]))
        torch.default_generator.manual_seed(int(seed[0]) << 32 | int(seed[1]))
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class NamedFileMapper:
    """Wrap a dataset mapper so that a failure names the image file it was reading.

    (PIL's "image file is truncated" and friends name no file, and in a
    DataLoader worker the traceback does not show the record.)
    """

    def __init__(self, mapper: Callable[[Dict], Optional[Dict]]):
        self.mapper = mapper

    def __call__(self, record: Dict) -> Optional[Dict]:
        try:
            return self.mapper(record)
        except Exception as e:
            raise RuntimeError(
                f"failed to read or map image {record.get('file_name')!r} "
                f"(image_id {record.get('image_id')}): {type(e).__name__}: {e}"
            ) from e


class KeyedMapDataset(Dataset):
    """``mapper(dicts[index])`` for a key ``(iteration, slot, index)``, with key-seeded RNGs.

    A mapper that returns None (detectron2's convention to skip a sample) is
    retried on other indices drawn from the key's own generator.

    Args:
        dataset_dicts: the records (kept serialized, as detectron2's ``DatasetFromList``).
        mapper: record -> model input dict (or None).
        seed (int): the data seed; ``rank`` is added to every key's seed.
        max_retries (int): attempts before a ``RuntimeError``.
    """

    def __init__(self, dataset_dicts: List[Dict], mapper: Callable, seed: int, max_retries: int = 20):
        self._records = DatasetFromList(dataset_dicts, copy=False, serialize=True)
        self._mapper = NamedFileMapper(mapper)
        self._seed = int(seed)
        self._rank = comm.get_rank()
        self._max_retries = int(max_retries)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, key: Key) -> Dict:
        iteration, slot, index = key
        for attempt in range(self._max_retries):
            with seeded_global_rng((self._seed, self._rank, iteration, slot, attempt)):
                data = self._mapper(self._records[index])
            if data is not None:
                return data
            index = int(np.random.default_rng([self._seed, self._rank, iteration, slot, attempt]).integers(len(self)))
        raise RuntimeError(f"the mapper returned None for {self._max_retries} records of sample {key}")


class GroupedBatchKeys(Sampler):
    """Batches of keys ``(iteration, slot, index)`` from an infinite index stream, from ``start_iter`` on.

    Args:
        sampler: this rank's infinite stream of dataset indices.
        batch_size (int): B, images per batch on this rank.
        aspect_groups (np.ndarray or None): per-index group id (0: w > h, 1:
            otherwise, as ``AspectRatioGroupedDataset``); None puts every index
            in one group.
        start_iter (int): the first batch yielded is batch ``start_iter`` of
            the stream (the earlier ones are formed from indices only, and dropped).
    """

    def __init__(self, sampler: Sampler, batch_size: int, aspect_groups: Optional[np.ndarray] = None, start_iter=0):
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.aspect_groups = aspect_groups
        self.start_iter = int(start_iter)

    def __iter__(self) -> Iterator[List[Key]]:
        buckets: Dict[int, List[int]] = {}
        iteration = 0
        for index in self.sampler:
            group = 0 if self.aspect_groups is None else int(self.aspect_groups[index])
            bucket = buckets.setdefault(group, [])
            bucket.append(int(index))
            if len(bucket) == self.batch_size:
                if iteration >= self.start_iter:
                    yield [(iteration, slot, i) for slot, i in enumerate(bucket)]
                iteration += 1
                bucket.clear()


class ResumableTrainLoader:
    """Iterable of per-rank training batches (lists of mapped dicts) that can start at any iteration.

    Iterating creates the DataLoader (and its workers) lazily, on the first
    ``next()``, so the trainer can set the start iteration and the seed from a
    checkpoint after building the loader (detectron2 0.6 calls ``iter()`` in
    ``SimpleTrainer.__init__``, before ``resume_or_load``).

    Args:
        dataset_dicts: training records.
        mapper: record -> model input.
        sampler_factory: seed -> this rank's index sampler.
        batch_size (int): images per batch on this rank.
        aspect_ratio_grouping (bool): batch images of the same orientation.
        num_workers (int): DataLoader workers (results do not depend on it).
        seed (int): the data seed.
    """

    def __init__(self, dataset_dicts, mapper, sampler_factory, *, batch_size, aspect_ratio_grouping, num_workers, seed):
        self._dicts = dataset_dicts
        self._mapper = mapper
        self._sampler_factory = sampler_factory
        self.batch_size = int(batch_size)
        self._groups = (
            np.array([0 if d["width"] > d["height"] else 1 for d in dataset_dicts], dtype=np.int8)
            if aspect_ratio_grouping
            else None
        )
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.start_iter = 0
        self._sampler: Tuple[Optional[int], Optional[Sampler]] = (None, None)

    def sampler(self) -> Sampler:
        """This rank's index sampler for the current seed (built once per seed)."""
        if self._sampler[0] != self.seed:
            self._sampler = (self.seed, self._sampler_factory(self.seed))
        return self._sampler[1]

    def set_start_iter(self, iteration: int) -> None:
        """Make the next iteration over the loader start at batch ``iteration``."""
        self.start_iter = int(iteration)

    def state_dict(self) -> Dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: Dict) -> None:
        self.seed = int(state["seed"])

    def __iter__(self):
        batches = GroupedBatchKeys(self.sampler(), self.batch_size, self._groups, self.start_iter)
        loader = DataLoader(
            KeyedMapDataset(self._dicts, self._mapper, self.seed),
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=trivial_batch_collator,
            # its own generator: creating the iterator draws no number from torch's global RNG
            generator=torch.Generator().manual_seed(self.seed),
        )
        yield from loader


def _check_annotations(cfg, dataset_dicts: List[Dict]) -> None:
    """Refuse a training set without any annotation (it would train on background only)."""
    if not any(d.get("annotations") for d in dataset_dicts):
        raise ValueError(
            f"the training set {tuple(cfg.DATASETS.TRAIN)} ({len(dataset_dicts)} images) has no "
            "annotation: training would see background only. Check its json / registration."
        )


def build_resumable_train_loader(cfg, mapper=None, dataset_dicts=None, seed=None) -> ResumableTrainLoader:
    """The training loader of a config (``DATASETS.TRAIN``, ``DATALOADER.*``, ``SOLVER.IMS_PER_BATCH``).

    Args:
        cfg: the config.
        mapper: default ``DatasetMapper(cfg, True)``.
        dataset_dicts: default ``get_detection_dataset_dicts(DATASETS.TRAIN, ...)`` as detectron2.
        seed: default ``SEED``, or a random seed shared by the processes when ``SEED < 0``.
    """
    if dataset_dicts is None:
        dataset_dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
    _check_annotations(cfg, dataset_dicts)
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    world_size = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world_size} processes")
    logger.info(f"Training sampler {cfg.DATALOADER.SAMPLER_TRAIN} over {len(dataset_dicts)} images, seed {seed}")
    loader = ResumableTrainLoader(
        dataset_dicts,
        DatasetMapper(cfg, True) if mapper is None else mapper,
        lambda s: build_train_sampler(cfg, dataset_dicts, s),
        batch_size=cfg.SOLVER.IMS_PER_BATCH // world_size,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        seed=seed,
    )
    loader.sampler()  # an unknown sampler name fails now, not at the first step
    return loader
