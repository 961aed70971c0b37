"""The resumable training loader, the class-balanced sampler and the data checks.

Shape shorthand: B images per batch.
"""
import json
import os
import uuid

import numpy as np
import pytest
import torch

import ltdet  # noqa: F401
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.common import AspectRatioGroupedDataset

import ltdet.data.samplers as samplers_module
from ltdet import add_ltdet_config
from ltdet.data import register_lvis_format_dataset
from ltdet.data.samplers import ClassBalancedTrainingSampler
from ltdet.data.synthetic import generate
from ltdet.data.train_loader import GroupedBatchKeys, KeyedMapDataset, build_resumable_train_loader
from ltdet.evaluation import build_ltdet_evaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("loader") / "synthetic_lt")
    paths = generate(root, seed=2, num_train=120, num_val=8, image_size=64, num_frequent=1, num_common=2,
                     num_rare=3, val_min_images=1, progress=False)
    name = f"loader_train_{uuid.uuid4().hex[:6]}"
    register_lvis_format_dataset(name, paths["train"], root)
    yield root, paths, name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def loader_cfg(name, workers=0, sampler="TrainingSampler"):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "synthetic", "faster_rcnn_softmax.yaml"))
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.SAMPLER_TRAIN = sampler
    cfg.SOLVER.IMS_PER_BATCH = 3
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (48, 64, 80), 80  # random resize + random flip
    return cfg


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert [d["file_name"] for d in x] == [d["file_name"] for d in y]
        for dx, dy in zip(x, y):
            assert torch.equal(dx["image"], dy["image"])
            assert torch.equal(dx["instances"].gt_boxes.tensor, dy["instances"].gt_boxes.tensor)


def test_a_loader_started_at_k_gives_batches_k_onwards(tiny):
    _, _, name = tiny
    straight = take(build_resumable_train_loader(loader_cfg(name)), 6)
    resumed = build_resumable_train_loader(loader_cfg(name))
    resumed.set_start_iter(3)
    same_batches(take(resumed, 3), straight[3:])
    sizes = {tuple(d["image"].shape[1:]) for batch in straight for d in batch}
    assert len(sizes) > 1, "the augmentation is random, and still reproduced"


def test_the_stream_does_not_depend_on_the_worker_count_or_the_global_rng(tiny):
    _, _, name = tiny
    np.random.seed(123)
    torch.manual_seed(123)
    with_workers = take(build_resumable_train_loader(loader_cfg(name, workers=2)), 3)
    np.random.seed(7)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    in_process = take(build_resumable_train_loader(loader_cfg(name, workers=0)), 3)
    same_batches(with_workers, in_process)
    assert torch.equal(torch.get_rng_state(), before), "mapping in the main process leaves its RNG alone"


def test_the_seed_is_part_of_the_loader_state(tiny):
    _, _, name = tiny
    a = build_resumable_train_loader(loader_cfg(name), seed=5)
    b = build_resumable_train_loader(loader_cfg(name), seed=6)
    assert [d["file_name"] for d in take(a, 2)[1]] != [d["file_name"] for d in take(b, 2)[1]]
    b.load_state_dict(a.state_dict())
    same_batches(take(a, 2), take(b, 2))


def test_grouping_matches_detectron2s_aspect_ratio_grouping():
    rng = np.random.default_rng(0)
    widths = rng.choice([40, 80], size=50)
    groups = np.where(widths > 60, 0, 1)  # w > h (h = 60) is group 0, as detectron2
    stream = rng.integers(0, 50, size=400).tolist()
    ours = [[i for _, _, i in b] for b in GroupedBatchKeys(stream, 4, groups)]
    dicts = [{"width": int(widths[i]), "height": 60, "i": i} for i in stream]
    theirs = [[d["i"] for d in b] for b in AspectRatioGroupedDataset(dicts, 4)]
    assert ours == theirs[: len(ours)] and len(ours) >= 90
    keys = list(GroupedBatchKeys(stream, 4, groups, start_iter=10))
    assert keys[0][0][:2] == (10, 0) and [[i for _, _, i in b] for b in keys] == ours[10:]


def test_a_mapper_returning_none_is_retried_deterministically():
    dicts = [{"i": i} for i in range(20)]

    def mapper(record):
        return None if record["i"] % 2 else {"i": record["i"], "r": float(np.random.rand())}

    a, b = KeyedMapDataset(dicts, mapper, seed=0), KeyedMapDataset(dicts, mapper, seed=0)
    outs = [a[(it, 0, 1)] for it in range(5)]
    assert [o["i"] % 2 for o in outs] == [0] * 5
    assert outs == [b[(it, 0, 1)] for it in range(5)]


# ------------------------------------------------------------ class-balanced sampler
def _one_class_per_image(counts):
    dicts = []
    for c, n in enumerate(counts):
        dicts += [{"annotations": [{"category_id": c}]} for _ in range(n)]
    dicts.append({"annotations": []})
    return dicts


def test_class_balanced_sampler_draws_every_class_uniformly():
    counts = [400, 120, 30, 6, 1]
    dicts = _one_class_per_image(counts)
    sampler = ClassBalancedTrainingSampler(dicts, seed=0)
    it = iter(sampler)
    drawn = [next(it) for _ in range(50_000)]
    classes = np.array([dicts[i]["annotations"][0]["category_id"] for i in drawn])
    freq = np.bincount(classes, minlength=5) / len(classes)
    np.testing.assert_allclose(freq, 0.2, atol=0.01)
    assert len(dicts) - 1 not in set(drawn), "images without instances are never drawn"
    rare = [i for i in drawn if dicts[i]["annotations"][0]["category_id"] == 2]
    assert np.bincount(rare).max() < 3 * np.bincount(rare)[np.bincount(rare) > 0].min(), "images uniform in a class"
    ordered = ClassBalancedTrainingSampler(dicts, shuffle=False)
    first = [dicts[i]["annotations"][0]["category_id"] for i, _ in zip(iter(ordered), range(10))]
    assert first == [0, 1, 2, 3, 4] * 2


def test_class_balanced_sampler_is_sharded_like_detectron2(monkeypatch):
    dicts = _one_class_per_image([50, 5, 2])
    stream = list(zip(iter(ClassBalancedTrainingSampler(dicts, seed=3)), range(60)))
    shards = []
    for rank in range(2):
        monkeypatch.setattr(samplers_module.comm, "get_rank", lambda: rank)
        monkeypatch.setattr(samplers_module.comm, "get_world_size", lambda: 2)
        shards.append([i for i, _ in zip(iter(ClassBalancedTrainingSampler(dicts, seed=3)), range(30))])
    assert shards[0] == [i for i, _ in stream[0::2]] and shards[1] == [i for i, _ in stream[1::2]]


def test_class_balanced_sampler_through_the_config(tiny):
    _, _, name = tiny
    loader = build_resumable_train_loader(loader_cfg(name, sampler="ClassBalancedTrainingSampler"))
    assert isinstance(loader.sampler(), ClassBalancedTrainingSampler)
    assert len(take(loader, 2)[1]) == 3
    with pytest.raises(ValueError, match="SAMPLER_TRAIN = 'NoSuchSampler'.*ClassBalancedTrainingSampler"):
        build_resumable_train_loader(loader_cfg(name, sampler="NoSuchSampler"))


# ------------------------------------------------------------------ data errors
def _variant(tiny, tmp_path, edit, split="train"):
    root, paths, _ = tiny
    with open(paths[split]) as f:
        data = json.load(f)
    edit(data)
    path = str(tmp_path / f"{split}_variant.json")
    with open(path, "w") as f:
        json.dump(data, f)
    name = f"variant_{uuid.uuid4().hex[:6]}"
    register_lvis_format_dataset(name, path, root)
    return name, path


def _flip_first_boxes(data, n=3):
    for ann in data["annotations"][:n]:
        ann["bbox"][2] = -ann["bbox"][2]
    return data


def test_negative_boxes_are_dropped_from_training_with_the_json_named(tiny, tmp_path, caplog):
    name, path = _variant(tiny, tmp_path, _flip_first_boxes)
    with caplog.at_level("WARNING", logger="ltdet.data.datasets"):
        dicts = DatasetCatalog.get(name)
    assert f"{path}: dropped 3 annotations" in caplog.text
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for d in dicts for a in d["annotations"])


def test_negative_boxes_in_an_evaluation_json_are_refused(tiny, tmp_path):
    name, path = _variant(tiny, tmp_path, _flip_first_boxes, split="val")
    cfg = loader_cfg(name)
    with pytest.raises(ValueError, match=rf"{path}: 3 ground-truth annotations have a box"):
        build_ltdet_evaluator(cfg, name, str(tmp_path / "eval"))


def test_a_training_set_without_annotations_is_refused(tiny, tmp_path):
    name, _ = _variant(tiny, tmp_path, lambda data: data.update(annotations=[]))
    cfg = loader_cfg(name)
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    with pytest.raises(ValueError, match="has no annotation: training would see background only"):
        build_resumable_train_loader(cfg)


def test_a_truncated_image_is_named(tiny, tmp_path):
    root, paths, _ = tiny
    with open(paths["train"]) as f:
        data = json.load(f)
    image = next(i for i in data["images"] if any(a["image_id"] == i["id"] for a in data["annotations"]))
    original = os.path.join(root, image["coco_url"])
    truncated_dir = tmp_path / "train"
    truncated_dir.mkdir()
    with open(original, "rb") as f:
        (truncated_dir / os.path.basename(original)).write_bytes(f.read()[:300])
    data["images"] = [image]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == image["id"]]
    path = str(tmp_path / "one.json")
    with open(path, "w") as f:
        json.dump(data, f)
    name = f"truncated_{uuid.uuid4().hex[:6]}"
    register_lvis_format_dataset(name, path, str(tmp_path))
    with pytest.raises(RuntimeError, match=rf"failed to read or map image '{truncated_dir}/.*png'.*truncated"):
        take(build_resumable_train_loader(loader_cfg(name, workers=1)), 1)
