"""Experiment trackers of PointNeXt's YAMLs (`tensorboard: true`, `wandb.use_wandb: true`), when installed."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from openpoints.utils import EasyConfig

logger = logging.getLogger(__name__)


class Trackers:
    """TensorBoard / wandb scalars, only when enabled in the cfg and importable."""

    def __init__(self, cfg: EasyConfig, run_dir: Path):
        self.writer = self.wandb_run = None
        if cfg.get('tensorboard'):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning('tensorboard: true but tensorboard is not installed; not writing event files')
            else:
                self.writer = SummaryWriter(log_dir=str(run_dir))
        if (cfg.get('wandb') or {}).get('use_wandb'):
            try:
                import wandb
            except ImportError:
                logger.warning('wandb.use_wandb: true but wandb is not installed; not logging to wandb')
            else:
                self.wandb_run = wandb.init(project=cfg.wandb.get('project'), dir=str(run_dir), config=cfg.dict(),
                                            reinit=True)

    def log(self, scalars: Mapping[str, Any], epoch: int) -> None:
        numbers = {k: v for k, v in scalars.items() if isinstance(v, (int, float)) and k != 'epoch'}
        if self.writer is not None:
            for key, value in numbers.items():
                self.writer.add_scalar(key, value, epoch)
        if self.wandb_run is not None:
            self.wandb_run.log(numbers, step=epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
