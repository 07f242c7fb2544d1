"""Trajectory matching (MTT; Cazenavette et al., "Dataset Distillation by Matching Training Trajectories",
CVPR 2022, Alg. 1), baselines_spec.md §B.4, for point clouds."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..registry import OBJECTIVES
from .base import SetObjective
from .expert_trajectories import ExpertBuffer

logger = logging.getLogger(__name__)


@OBJECTIVES.register_module()
class TrajectoryMatching(SetObjective):
    """MTT's normalised parameter distance after an unrolled, differentiable SGD on all synthetic clouds.

    From a random expert's snapshot θ_t (t < max_start_epoch), `syn_steps` plain-SGD steps of the backbone on
    the synthetic set with a learnable step size α give θ_student; the loss is ‖θ_student − θ_{t+M}‖² /
    ‖θ_t − θ_{t+M}‖², M = `expert_epochs` (exactly 1 when syn_steps is 0 or α is 0). The unroll is built with
    create_graph, so the loss reaches the synthetic clouds and α. The engine calls `prepare` once (expert
    buffer, see expert_trajectories.py) and `match_all` once per outer step.

    Memory bound: for every differentiable step the graph keeps the activations of one synthetic minibatch
    (DistillPointNet: about batch_syn × N × Σwidths × 3 floats) and one flat parameter vector, so memory ≈
    backprop_steps × (batch_syn × N × Σwidths × 12 B + num_params × 8 B). `batch_syn` caps the clouds per step
    (MTT: all of them) and `backprop_steps` truncates the unroll: the first syn_steps − backprop_steps steps run
    on detached clouds without a graph, so only the last steps reach the clouds and α. Both default to MTT.

    Departures from MTT: no DSA augmentation in the unroll (no point-cloud DSA exists here); experts see random
    point subsets each batch instead; DistillPointNet has no BatchNorm or dropout, so the functional unroll is
    deterministic. `step_size_param: log` is an option MTT does not have.

    Args:
        num_experts: expert trajectories in the buffer (MTT 100; 10–20 suffice for point clouds, §B.4).
        train_epochs: epochs each expert is trained (snapshots 0..train_epochs are stored).
        lr_teacher: the experts' SGD learning rate, and the initial synthetic step size α (as in MTT).
        expert_batch: the experts' batch size.
        expert_num_points: points per cloud for the experts; default the distillation's `num_points`.
        expert_epochs: M, how many expert epochs ahead the target snapshot is.
        max_start_epoch: the start epoch is drawn uniformly from [0, max_start_epoch).
        syn_steps: differentiable SGD steps on the synthetic set per match (0: the loss is exactly 1).
        batch_syn: synthetic clouds per step (re-shuffled when exhausted, as MTT); default all of them.
        backprop_steps: only the last `backprop_steps` steps are differentiable (memory bound); default all.
        lr_lr: learning rate of α's parameter (MTT's `lr_lr`; SGD with `lr_momentum`).
        step_size_param: 'raw' (MTT: α itself is learned, unclamped, so it can turn negative) or 'log'
            (log α is learned: α stays positive and its updates scale with α, steadier when the
            normalised distance has a small denominator).
        lr_momentum: momentum of α's SGD (MTT 0.5).
        buffer_dir: the expert buffer folder; default `<run_dir>/experts`. Reused when it matches.
        seed: base seed of the experts (expert i uses seed + i); default the experiment's seed.
    """

    trains_backbone = False

    def __init__(self, *, num_experts: int = 10, train_epochs: int = 50, lr_teacher: float = 0.01,
                 expert_batch: int = 256, expert_num_points: int | None = None, expert_epochs: int = 3,
                 max_start_epoch: int = 25, syn_steps: int = 20, batch_syn: int | None = None,
                 backprop_steps: int | None = None, lr_lr: float = 1e-5, lr_momentum: float = 0.5,
                 step_size_param: str = 'raw', buffer_dir: str | None = None, seed: int | None = None):
        counts = dict(num_experts=num_experts, train_epochs=train_epochs, expert_batch=expert_batch,
                      expert_epochs=expert_epochs, max_start_epoch=max_start_epoch)
        for key, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'TrajectoryMatching: {key} must be an int >= 1, got {value!r}')
        for key, value in dict(syn_steps=syn_steps, batch_syn=batch_syn, backprop_steps=backprop_steps,
                               expert_num_points=expert_num_points).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f'TrajectoryMatching: {key} must be an int >= 0 (or null), got {value!r}')
        if max_start_epoch + expert_epochs > train_epochs:
            raise ValueError(f'TrajectoryMatching: max_start_epoch + expert_epochs ({max_start_epoch} + '
                             f'{expert_epochs}) must be <= train_epochs ({train_epochs}): the target snapshot '
                             f't + expert_epochs must exist. Lower max_start_epoch or raise train_epochs.')
        self.num_experts, self.train_epochs, self.lr_teacher = num_experts, train_epochs, float(lr_teacher)
        self.expert_batch, self.expert_num_points = expert_batch, expert_num_points
        self.expert_epochs, self.max_start_epoch, self.syn_steps = expert_epochs, max_start_epoch, syn_steps
        self.batch_syn, self.backprop_steps = batch_syn, backprop_steps
        self.lr_lr, self.lr_momentum = float(lr_lr), float(lr_momentum)
        self.buffer_dir, self.seed = buffer_dir, seed
        if step_size_param not in ('raw', 'log'):
            raise ValueError(f"TrajectoryMatching: step_size_param must be 'raw' or 'log', got {step_size_param!r}")
        if step_size_param == 'log' and not lr_teacher > 0:
            raise ValueError(f"TrajectoryMatching: step_size_param 'log' needs lr_teacher > 0, got {lr_teacher!r}")
        self.step_size_param = step_size_param
        initial = float(lr_teacher) if step_size_param == 'raw' else float(torch.tensor(float(lr_teacher)).log())
        self.syn_lr = nn.Parameter(torch.tensor(initial))   # α or log α, learnable (MTT's syn_lr)
        self.buffer: ExpertBuffer | None = None

    # ------------------------------------------------------------------------------ engine hooks
    def step_size(self) -> Tensor:
        """α, the synthetic SGD step size, differentiable w.r.t. its parameter."""
        return self.syn_lr if self.step_size_param == 'raw' else self.syn_lr.exp()

    def parameters(self) -> list[Tensor]:
        return [self.syn_lr]

    def optimizer(self) -> torch.optim.Optimizer:
        """α's own optimiser (MTT: SGD(lr_lr, momentum 0.5)), stepped with the synthesizer's."""
        return torch.optim.SGD([self.syn_lr], lr=self.lr_lr, momentum=self.lr_momentum)

    def state_dict(self) -> dict:
        return {'syn_lr': self.syn_lr.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            self.syn_lr.copy_(state['syn_lr'])

    def prepare(self, pool, cfg: Mapping[str, Any], run_dir: str | os.PathLike, device: torch.device | str,
                make_backbone) -> float:
        """Build or load the expert buffer and move α to `device`; returns the seconds spent training experts.

        Args:
            pool: the RealPool the experts train on.
            cfg: the experiment config (for the dataset name, backbone and seed).
            make_backbone: () -> a fresh backbone with the engine's architecture.
        """
        with torch.no_grad():
            self.syn_lr.data = self.syn_lr.data.to(device)
        d = cfg['distill']
        buffer_dir = Path(self.buffer_dir) if self.buffer_dir else Path(run_dir) / 'experts'
        probe = make_backbone()
        expect = {'backbone': dict(d['backbone']), 'dataset': pool.name, 'num_classes': int(pool.num_classes),
                  'epochs': self.train_epochs, 'lr': self.lr_teacher, 'batch_size': self.expert_batch,
                  'num_points': int(self.expert_num_points or d['num_points']),
                  'seed': int(self.seed if self.seed is not None else cfg.get('seed') or 0),
                  'num_params': sum(p.numel() for p in probe.parameters()),
                  'param_names': [name for name, _ in probe.named_parameters()]}
        self.buffer = ExpertBuffer(buffer_dir, self.num_experts, expect)
        seconds = self.buffer.build(make_backbone, pool.pos, pool.labels, device)
        logger.info('expert buffer %s: %d experts x %d epochs ready (%.1f s of training now)', buffer_dir,
                    self.num_experts, self.train_epochs, seconds)
        return seconds

    # ---------------------------------------------------------------------------------- the loss
    def match_all(self, backbone: nn.Module, syn_pos: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The normalised parameter distance for one random (expert, start epoch).

        Args:
            backbone: gives the architecture only; its parameters are replaced by the expert's.
            syn_pos: (S, N, 3) all synthetic clouds, differentiable w.r.t. the synthesizer.
            labels: (S,) their classes.
            generator: CPU RNG for the expert, the start epoch and the minibatch order.

        Returns:
            Scalar loss, differentiable w.r.t. `syn_pos` and the step size.

        Raises:
            RuntimeError: `prepare` was not called; ValueError: the buffer was trained for another backbone.
        """
        if self.buffer is None:
            raise RuntimeError('TrajectoryMatching.prepare() must build the expert buffer before matching.')
        expert = int(torch.randint(self.num_experts, (), generator=generator))
        start = int(torch.randint(self.max_start_epoch, (), generator=generator))
        theta_start, theta_target = self.buffer.snapshots(expert, start, start + self.expert_epochs)
        return self.distance_after_unroll(backbone, syn_pos, labels, theta_start.to(syn_pos.device),
                                          theta_target.to(syn_pos.device), generator)

    def distance_after_unroll(self, backbone: nn.Module, syn_pos: Tensor, labels: Tensor, theta_start: Tensor,
                              theta_target: Tensor, generator: torch.Generator) -> Tensor:
        """‖θ_student − θ*‖² / ‖θ_start − θ*‖² after `syn_steps` SGD steps of size α from θ_start."""
        names = [name for name, _ in backbone.named_parameters()]
        shapes = [p.shape for _, p in backbone.named_parameters()]
        sizes = [s.numel() for s in shapes]
        if theta_start.numel() != sum(sizes):
            raise ValueError(f'expert snapshots have {theta_start.numel()} parameters but the backbone has '
                             f'{sum(sizes)}: the buffer was trained for another backbone.')

        def logits_of(flat: Tensor, pos: Tensor) -> Tensor:
            params = {n: chunk.view(shape) for n, chunk, shape in zip(names, flat.split(sizes), shapes)}
            return functional_call(backbone, params, (pos,))

        batch = min(self.batch_syn or len(syn_pos), len(syn_pos))
        graph_from = self.syn_steps - (self.backprop_steps if self.backprop_steps is not None else self.syn_steps)
        step_size = self.step_size()
        student = theta_start.detach()
        order = torch.empty(0, dtype=torch.long)
        for step in range(self.syn_steps):
            if len(order) < batch:   # MTT: re-shuffle and chunk when the synthetic set is exhausted
                order = torch.cat([order, torch.randperm(len(syn_pos), generator=generator)])
            pick, order = order[:batch].to(syn_pos.device), order[batch:]
            differentiable = step >= max(graph_from, 0)
            if not differentiable:
                with torch.enable_grad():
                    student = student.detach().requires_grad_(True)
                    loss = F.cross_entropy(logits_of(student, syn_pos[pick].detach()), labels[pick])
                    grad, = torch.autograd.grad(loss, student)
                student = (student - step_size.detach() * grad).detach()
                continue
            if not student.requires_grad:
                student = student.requires_grad_(True)
            loss = F.cross_entropy(logits_of(student, syn_pos[pick]), labels[pick])
            grad, = torch.autograd.grad(loss, student, create_graph=True)
            student = student - step_size * grad
        return (student - theta_target).square().sum() / (theta_start - theta_target).square().sum()
