#!/usr/bin/env python
"""Draw a model's predictions on a few test images with detectron2's Visualizer (PNG files).

Each output image shows the predictions (score >= --score-thresh) on the left
and the ground truth on the right, for the first --num-images images of
--dataset (default: the config's first DATASETS.TEST). Datasets listed in
LTDET.DATASETS.REGISTER are registered first, as in train_net.py.

Examples:
    python tools/visualize.py --config-file configs/synthetic/faster_rcnn_eqlv2.yaml \\
        MODEL.WEIGHTS output/synthetic/faster_rcnn_eqlv2/model_final.pth
    python tools/visualize.py --config-file CONFIG --num-images 16 --score-thresh 0.5 --out vis/ \\
        MODEL.WEIGHTS model_final.pth
"""
import ltdet  # noqa: F401  (first: registers ltdet's modules and the detectron2 ops stand-in)

import argparse
import logging
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from ltdet.engine import LongTailTrainer, build_config

logger = logging.getLogger("ltdet.visualize")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    parser.add_argument("--dataset", help="registered dataset to draw (default: DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=8, help="number of images (default: %(default)s)")
    parser.add_argument("--out", help="output directory (default: OUTPUT_DIR/visualize)")
    parser.add_argument("--score-thresh", type=float, default=0.3,
                        help="smallest score of a drawn prediction (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=None,
                        help="drawing scale (default: enlarge small images to a 384-pixel short side)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS FILE")
    return parser.parse_args(argv)


def setup(args):
    """The frozen config (``train_net.py``'s setup for an evaluation-only run)."""
    return build_config(args.config_file, args.opts, eval_only=True)


def weightless(cfg):
    """``cfg`` without MODEL.WEIGHTS (they are loaded by ltdet's checking checkpointer)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def draw(record, predictions, metadata, score_thresh, scale=None):
    """Predictions (left) and ground truth (right) of one image.

    Args:
        record (dict): the image's dataset dict.
        predictions (dict): the model's output for it (``instances``).
        metadata (Metadata): the dataset's metadata (``thing_classes``).
        score_thresh (float): smallest score drawn.
        scale (float): drawing scale; None = enlarge to a 384-pixel short side.

    Returns:
        ndarray[H, W', 3] uint8: RGB image.
    """
    image = read_image(record["file_name"], format="RGB")
    if scale is None:
        scale = max(1.0, 384.0 / min(image.shape[:2]))
    instances = predictions["instances"].to("cpu")
    instances = instances[instances.scores >= score_thresh]
    left = Visualizer(image, metadata, scale=scale).draw_instance_predictions(instances).get_image()
    right = Visualizer(image, metadata, scale=scale).draw_dataset_dict(record).get_image()
    gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="ltdet")
    cfg = setup(args)
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: drawing the predictions of an untrained model")
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    records = DatasetCatalog.get(dataset)[: args.num_images]
    metadata = MetadataCatalog.get(dataset)
    out_dir = args.out or os.path.join(cfg.OUTPUT_DIR, "visualize")
    os.makedirs(out_dir, exist_ok=True)
    predictor = DefaultPredictor(weightless(cfg))
    # weights checked against the config's model, as train_net.py --eval-only does
    LongTailTrainer.build_checkpointer(cfg, predictor.model, strict=True).load(cfg.MODEL.WEIGHTS)
    paths = []
    for record in records:
        predictions = predictor(read_image(record["file_name"], format=cfg.INPUT.FORMAT))
        image = draw(record, predictions, metadata, args.score_thresh, args.scale)
        path = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(record['file_name']))[0]}.png")
        Image.fromarray(image).save(path)
        paths.append(path)
    print(f"wrote {len(paths)} images to {out_dir}")
    return paths


if __name__ == "__main__":
    main()
