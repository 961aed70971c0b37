#!/usr/bin/env python
"""ltdet training and evaluation script (modelled on detectron2's PointRend project).

Examples:
    python train_net.py --config-file configs/synthetic/faster_rcnn_eqlv2.yaml
    python train_net.py --config-file configs/lvis_v1/faster_rcnn_R_50_FPN_eqlv2_1x.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python train_net.py --config-file SOFTMAX_CONFIG --eval-only MODEL.WEIGHTS ... LTDET.TEST.NORCAL.GAMMAS "[0, 0.5, 1]"
    python train_net.py --config-file CONFIG --resume
"""
import ltdet  # noqa: F401  (registers ltdet's models, losses and datasets)

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from ltdet.engine import LongTailTrainer as Trainer
from ltdet.engine import build_config


def setup(args):
    """Create configs and perform basic setups."""
    cfg = build_config(args.config_file, args.opts, eval_only=args.eval_only)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ltdet")
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        # refuses weights trained with another meta-architecture or loss (LTDET.CHECKPOINT.ALLOW_MISMATCH)
        Trainer.build_checkpointer(cfg, model, strict=True).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        if len(cfg.LTDET.TEST.NORCAL.GAMMAS):  # one evaluation per NorCal gamma
            return Trainer.norcal_sweep(cfg, model)
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
