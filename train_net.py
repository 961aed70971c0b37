#!/usr/bin/env python
"""ltdet training and evaluation script (modelled on detectron2's PointRend project).

Examples:
    python train_net.py --config-file configs/synthetic/faster_rcnn_eqlv2.yaml
    python train_net.py --config-file configs/lvis_v1/faster_rcnn_R_50_FPN_eqlv2_1x.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python train_net.py --config-file CONFIG --resume
"""
import ltdet  # noqa: F401  (first: registers ltdet's modules and the detectron2 ops stand-in)

import os

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import verify_results

from ltdet.engine import build_config, build_grad_ratio_hook
from ltdet.engine.defaults import insert_before
from ltdet.evaluation import build_ltdet_evaluator


class Trainer(DefaultTrainer):
    """DefaultTrainer with LVIS-aware evaluation and the gradient-ratio hook."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_ltdet_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self):
        ret = super().build_hooks()
        grad_hook = build_grad_ratio_hook(self.cfg, self.model)
        if grad_hook is not None:
            # before the checkpointer (statistics flushed into the saved buffers)
            # and before the writers (its EventStorage entries are written this step)
            ret = insert_before(
                ret, grad_hook, (hooks.PeriodicCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)
            )
        return ret


def setup(args):
    """Create configs and perform basic setups."""
    cfg = build_config(args.config_file, args.opts, eval_only=args.eval_only)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
