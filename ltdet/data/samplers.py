"""Class-balanced training sampler (cRT, Kang et al. ICLR 2020; EFL Table 2 "CBS").

Shape shorthand: C classes, I images.
"""
import itertools
from typing import Dict, List, Optional

import torch
from torch.utils.data.sampler import Sampler

from detectron2.utils import comm

__all__ = ["ClassBalancedTrainingSampler"]


class ClassBalancedTrainingSampler(Sampler):
    """Infinite stream of dataset indices: a class uniformly, then an image that contains it.

    Every class with at least one (non-crowd) instance is drawn with
    probability 1 / C', C' the number of such classes; the image is drawn
    uniformly among the images of that class. Images without instances are
    never drawn. Like detectron2's ``TrainingSampler``, every process iterates
    the same global stream (same ``seed``) and keeps every ``world_size``-th
    index starting at its rank.

    Args:
        dataset_dicts (list[dict]): detectron2 dataset dicts (``annotations``
            with 0-based ``category_id``).
        shuffle (bool): draw at random (True), or cycle through the classes in
            id order and through each class's images in dataset order (False).
        seed (int): seed of the draws, the same on every process; None uses a
            random seed shared by all processes.
    """

    def __init__(self, dataset_dicts: List[Dict], *, shuffle: bool = True, seed: Optional[int] = None):
        per_class: Dict[int, List[int]] = {}
        for index, record in enumerate(dataset_dicts):
            classes = {a["category_id"] for a in record.get("annotations", []) if not a.get("iscrowd", 0)}
            for c in classes:
                per_class.setdefault(int(c), []).append(index)
        if not per_class:
            raise ValueError("ClassBalancedTrainingSampler: the dataset has no annotated instance")
        self.classes = sorted(per_class)
        lists = [per_class[c] for c in self.classes]
        self._counts = torch.tensor([len(images) for images in lists], dtype=torch.long)
        self._offsets = torch.cumsum(self._counts, 0) - self._counts
        self._images = torch.tensor(list(itertools.chain.from_iterable(lists)), dtype=torch.long)
        self._shuffle = bool(shuffle)
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    @property
    def num_classes(self) -> int:
        """C', the number of classes that can be drawn."""
        return len(self.classes)

    def __iter__(self):
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self, chunk: int = 4096):
        if not self._shuffle:
            for cycle in itertools.count():
                cols = self._offsets + torch.remainder(torch.full_like(self._counts, cycle), self._counts)
                yield from self._images[cols].tolist()
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            classes = torch.randint(len(self.classes), (chunk,), generator=g)
            counts = self._counts[classes]
            within = torch.floor(torch.rand(chunk, generator=g, dtype=torch.float64) * counts).long()
            yield from self._images[self._offsets[classes] + torch.minimum(within, counts - 1)].tolist()
