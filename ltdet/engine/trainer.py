"""``LongTailTrainer``: detectron2's ``DefaultTrainer`` with exact resume and checked checkpoints.

On top of ``DefaultTrainer`` (model, optimizer, scheduler, hooks, launcher):

* evaluation by dataset type with frequency-group APs (``build_ltdet_evaluator``),
  run with the training RNG preserved;
* ``GradientRatioHook`` before the checkpointer and the writers, and
  ``grad_stats.json`` written right after each checkpoint;
* exact ``--resume``: the checkpoint holds the optimizer state (detectron2 0.6's
  ``DefaultTrainer`` saves none; newer detectron2 does, and is left to do it),
  every process's RNG states (``RNGStateHook``) and the data seed, and the
  training loader (``ResumableTrainLoader``) restarts at the resumed iteration;
* atomic checkpoints that record the model's identity (``LongTailCheckpointer``);
* decoupled training (``LTDET.TRAIN_ONLY``, ``LTDET.REINIT``, ``decoupled.py``) and
  gradient clipping over the whole model (``CLIP_TYPE "full_model"``, ``optimizer.py``).
"""
import json
import logging
import os
import weakref
from collections import OrderedDict

from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.utils import comm

from ltdet.data.train_loader import NamedFileMapper, build_resumable_train_loader
from ltdet.evaluation import build_ltdet_evaluator
from ltdet.modeling.roi_heads.norcal import NorCal

from .atomic_io import atomic_open
from .checkpoint import LongTailCheckpointer, model_identity
from .decoupled import restore_parameters, snapshot_parameters, train_only
from .defaults import insert_before
from .grad_ratio_hook import build_grad_ratio_hook
from .grad_stats_file import write_grad_stats
from .optimizer import build_optimizer
from .rng_state import RNGStateHook, preserved_rng_state

__all__ = ["LongTailTrainer", "bbox_results"]

logger = logging.getLogger(__name__)

# detectron2 0.6's DefaultTrainer inherits TrainerBase's state_dict (iteration and hooks only);
# later versions add the inner trainer's (optimizer, grad scaler) themselves.
_D2_SAVES_OPTIMIZER = DefaultTrainer.state_dict is not TrainerBase.state_dict


def bbox_results(results):
    """The bbox metrics of a :meth:`LongTailTrainer.test` result ({task: metrics} for one test set,
    {dataset: {task: metrics}} for several: the first dataset's), or None."""
    return results.get("bbox") or next(
        (r["bbox"] for r in results.values() if isinstance(r, dict) and "bbox" in r), None)


class LongTailTrainer(DefaultTrainer):
    """The trainer of ``train_net.py`` (see the module docstring)."""

    def __init__(self, cfg):
        if len(cfg.LTDET.TEST.NORCAL.GAMMAS):
            raise ValueError(
                "LTDET.TEST.NORCAL.GAMMAS is a sweep for --eval-only; a training run evaluates with "
                "LTDET.TEST.NORCAL.GAMMA"
            )
        super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_ltdet_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        train_only(model, cfg.LTDET.TRAIN_ONLY)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_resumable_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=NamedFileMapper(DatasetMapper(cfg, False)))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, without moving the training RNG (so EVAL_PERIOD does not change training)."""
        with preserved_rng_state():
            return super().test(cfg, model, evaluators)

    @classmethod
    def norcal_sweep(cls, cfg, model):
        """Evaluate ``model`` once per γ of ``LTDET.TEST.NORCAL.GAMMAS`` (NorCal's calibration only
        changes the scores, so one trained model serves every γ).

        Returns:
            OrderedDict: "norcal_gamma=<γ>" -> the results of :meth:`test`; also written, with the
            γ list, to ``OUTPUT_DIR/norcal_sweep.json`` by the main process.
        """
        modules = [m for m in model.modules() if isinstance(m, NorCal)]
        if not modules:
            raise ValueError("the model has no NorCal module (LTDET.TEST.NORCAL needs loss 'softmax')")
        default = modules[0].gamma
        results = OrderedDict()
        try:
            for gamma in cfg.LTDET.TEST.NORCAL.GAMMAS:
                for module in modules:
                    module.gamma = gamma
                logger.info("NorCal sweep: gamma = %g", gamma)
                results[f"norcal_gamma={gamma:g}"] = cls.test(cfg, model)
        finally:
            for module in modules:
                module.gamma = default
        if comm.is_main_process():
            lines = []
            for name, res in results.items():
                bbox = bbox_results(res) or {}
                lines.append(f"{name}: " + ", ".join(f"{k} {bbox[k]:.2f}" for k in ("AP", "APr", "APc", "APf") if k in bbox))
            logger.info("NorCal sweep (bbox):\n" + "\n".join(lines))
            with atomic_open(os.path.join(cfg.OUTPUT_DIR, "norcal_sweep.json"), "w") as f:
                json.dump({"gammas": list(cfg.LTDET.TEST.NORCAL.GAMMAS), "count": cfg.LTDET.TEST.NORCAL.COUNT,
                           "results": results}, f, indent=1)
        return results

    @classmethod
    def build_checkpointer(cls, cfg, model, strict=False, **checkpointables) -> LongTailCheckpointer:
        """The checkpointer of training runs (``strict=False``: fine-tuning from other weights
        is allowed) and of evaluation (``strict=True``); records the model identity."""
        return LongTailCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            identity=model_identity(cfg, model),
            strict=strict,
            allow_mismatch=cfg.LTDET.CHECKPOINT.ALLOW_MISMATCH,
            **checkpointables,
        )

    def build_hooks(self):
        # DefaultTrainer.__init__ calls build_hooks right after creating its checkpointer;
        # ltdet's replaces it here so that the PeriodicCheckpointer hook gets it.
        self.checkpointer = self.build_checkpointer(self.cfg, self._trainer.model, trainer=weakref.proxy(self))
        ret = super().build_hooks()
        later = (hooks.PeriodicCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)
        grad_hook = build_grad_ratio_hook(self.cfg, self._trainer.model)
        if grad_hook is not None:
            # before the checkpointer (statistics synchronised into the saved buffers)
            # and before the writers (its EventStorage entries are written this step)
            ret = insert_before(ret, grad_hook, later)
            self.checkpointer.add_save_callback(
                lambda path, extra: write_grad_stats(self.cfg.OUTPUT_DIR, grad_hook.to_dict(extra.get("iteration", -1)))
            )
        # last before the checkpointer: captures the RNG states the next step starts from
        return insert_before(ret, RNGStateHook(self.cfg.SOLVER.CHECKPOINT_PERIOD, self.max_iter), later)

    def state_dict(self):
        ret = super().state_dict()
        if not _D2_SAVES_OPTIMIZER:
            ret["_trainer"] = self._trainer.state_dict()
        ret["data_loader"] = self._trainer.data_loader.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if not _D2_SAVES_OPTIMIZER:
            if "_trainer" in state_dict:
                self._trainer.load_state_dict(state_dict["_trainer"])
            else:
                logger.warning("The checkpoint has no optimizer state: momentum restarts from zero")
        if "data_loader" in state_dict:
            self._trainer.data_loader.load_state_dict(state_dict["data_loader"])

    def resume_or_load(self, resume=True):
        resuming = resume and self.checkpointer.has_checkpoint()
        fresh = snapshot_parameters(self.checkpointer.model, self.cfg.LTDET.REINIT)
        if self.cfg.LTDET.TRAIN_ONLY and not resuming and not self.cfg.MODEL.WEIGHTS:
            logger.warning("LTDET.TRAIN_ONLY is set but MODEL.WEIGHTS is empty: fine-tuning an untrained model")
        super().resume_or_load(resume=resume)
        if not resuming:
            restore_parameters(self.checkpointer.model, fresh)
        self._trainer.data_loader.set_start_iter(self.start_iter)
