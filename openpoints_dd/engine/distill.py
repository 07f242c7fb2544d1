"""The one distillation loop: any synthesizer × objective × rotator, chosen in YAML.

Per iteration (DD3D spec §3.4; DC's loop): a fresh backbone; `outer_loop` times: for every class a
real batch and the class's synthetic clouds are compared by the objective and back-propagated at once
(graphs are freed class by class, so memory does not grow with the number of classes), then one
synthesizer step; between outer steps the backbone is trained `inner_loop` epochs on the detached
synthetic set (objectives that train it). Every source of randomness is re-seeded from (seed,
iteration, step, class), so a run resumed from a checkpoint ends bit-identical to an uninterrupted one,
and classes can be sharded across processes (`distributed.py`) without changing what is drawn.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from openpoints.models import build_model_from_cfg
from openpoints.models.build import MODELS
from openpoints.utils import EasyConfig

from ..data.artifact import save_artifact
from ..data.real_pool import RealPool
from ..data.synthetic_set import ROTATOR_PREFIX, synthesizer_tensors
from ..registry import ROTATORS, SYN_OPTIMIZERS, build_objective, build_rotator, build_synthesizer
from ..rotators import IdentityRotator
from ..settings import resolve_distill_config
from ..objectives import SetObjective
from ..synthesizers import Synthesizer
from ..synthesizers.coresets import gather_clouds
from ..utils.device import resolve_device
from ..utils.geometry import normalize_to_unit_sphere, subsample_points
from ..utils.io import atomic_path
from ..utils.progress import bar_disabled
from ..utils import distributed
from ..utils.fit import fit_epochs
from .tail_average import TailAverage

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = 'checkpoint.pt'
ARTIFACT_NAME = 'artifact.safetensors'
#: beside the artifact of a run whose export is a tail mean (`distill.tail_average`): its last iterate, the set the
#: run would have exported without the mean
LAST_ITERATE_SUFFIX = '-last'
#: a run started from real clouds: the set as it stood before the first iteration, so that the run's evaluation
#: can put the method beside its own start (research/cpu_protocol.md asks every real-started method for that row)
START_NAME = 'artifact-start.safetensors'

#: real and synthetic points matched in one chunk of classes (`distill.chunk_points`). Bounds the memory of a
#: grouped pass, and keeps its per-point maps small enough to stay near the cache: larger chunks made the step
#: slower, not faster (docs/results/distill_step.md).
DEFAULT_CHUNK_POINTS = 1 << 14


@dataclass
class DistillResult:
    artifact_path: Path
    iterations_done: int
    seconds: float
    stopped_by_budget: bool
    loss_history: list[float] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    start_path: Path | None = None   # the set before matching (`START_NAME`), for a real-started run that matched


class Distiller:
    """Builds the three parts and the backbone from a cfg and runs the loop.

    Args:
        cfg: the experiment config (`distill`, `dataset`, `seed`, `device` sections); checked and completed
            with the defaults of `openpoints_dd.settings`.
        pool: the real training pool.
        run_dir: where checkpoints and the artifact go.
        evaluate_fn: optional callback(distiller, iteration) -> dict, run every `distill.eval_every`.
    """

    TASK = 'classification'

    def __init__(self, cfg: Mapping[str, Any], pool: RealPool, run_dir: str | os.PathLike,
                 evaluate_fn: Callable[['Distiller', int], dict] | None = None):
        cfg = resolve_distill_config(cfg, task=self.TASK)
        self.cfg, self.pool, self.run_dir = cfg, pool, Path(run_dir)
        d = cfg['distill']
        self.d = d
        self.seed = cfg['seed']
        self.device = resolve_device(cfg['device'])
        self.num_classes = pool.num_classes
        torch.manual_seed(self.seed)   # the synthesizer's initial weights depend on the seed only
        self.synthesizer = build_synthesizer(d['synthesizer'], num_classes=self.num_classes, cpc=d['cpc']).to(self.device)
        self.objective = build_objective(d['objective'])
        check_backbone_methods(d['backbone'], self.objective)
        stored = self.synthesizer.max_points
        if stored is not None and int(d['num_points']) > stored:   # else refused at the first matching step
            raise ValueError(f"distill.num_points is {d['num_points']}, but distill.synthesizer "
                             f"({d['synthesizer']['NAME']}) stores {stored} points per cloud: raise "
                             f"distill.synthesizer.num_points or lower distill.num_points")
        # a synthesizer with a resolution of its own (MorphedClouds) makes clouds of that many points, any other num_points
        self.objective.check_cloud_sizes(int(d['num_points']), self.synthesizer.resolution or int(d['num_points']))
        # a per-slot rotator (EulerRotator) holds parameters for every synthetic cloud: it is told how many
        self.rotator = build_rotator(d['rotator'], **_rotator_args(d['rotator'], self.synthesizer.num_slots)).to(self.device)
        self.parameters = list(self.synthesizer.parameters()) + list(self.rotator.parameters())
        self.iteration = 0
        self.elapsed = 0.0   # seconds of the run, initialisation included (a resumed run's restored)
        # the seconds of every iteration of the run so far (a resumed run's earlier ones from the checkpoint): the
        # next one is expected to take their mean; and whether the budget stopped the run. Both are checkpointed, so
        # that a resume makes the budget decisions an uninterrupted run makes, and a run its budget stopped stays
        # stopped (resuming it exports the same artifact again).
        self.iteration_seconds: list[float] = []
        self.stopped_by_budget = False
        groups, rotator_schedules = _parameter_groups(self.synthesizer, self.rotator, d['rotator_optimizer'],
                                                      float(d['syn_optimizer'].get('lr', 1e-3)))
        self.optimizer = build_optimizer(d['syn_optimizer'], groups)
        synthesizer_schedule = self._synthesizer_schedule()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [synthesizer_schedule] * (len(groups) - len(rotator_schedules)) + rotator_schedules)
        self.evaluate_fn = evaluate_fn
        self.loss_history: list[float] = []
        self.evaluations: list[dict] = []
        self.init_report: dict = {}
        self.objective_optimizer = self._prepare_objective()
        tail = d['tail_average']
        self.tail_average = None if tail is None else TailAverage(
            nn.ModuleDict({'synthesizer': self.synthesizer, 'rotator': self.rotator}), tail['start_fraction'])
        # what a matching loss is back-propagated into (not the backbone: see accumulate_matching_gradients);
        # None (nothing trainable) falls back to a plain backward
        self.matched_parameters = [p for p in self.parameters + self.objective.parameters() if p.requires_grad] or None

    # ------------------------------------------------------------------------------------ helpers
    def _synthesizer_schedule(self) -> Callable[[int], float]:
        """`syn_scheduler`: the rate x gamma at every step_fraction of the run (`run_fraction`), read when the
        scheduler steps (after each iteration)."""
        sched, iterations = self.d['syn_scheduler'], self.d['iterations']
        fraction, gamma = sched['step_fraction'], sched['gamma']
        if sched['by'] == 'iterations':
            return _step_schedule(max(1, int(iterations * fraction)), gamma)
        return lambda iteration: gamma ** int(self.run_fraction(iteration, 'time') / fraction + 1e-9)

    def run_fraction(self, iteration: int, by: str) -> float:
        """The share of the run done after `iteration` iterations: the iterations' (`by: iterations`) or, `by:
        time`, the larger of that and the budget's share spent on the run's clock (a resumed run's included)."""
        done = iteration / max(self.d['iterations'], 1)
        if by == 'time':
            done = max(done, self.elapsed / (float(self.d['budget_minutes']) * 60))
        return done

    def _generator(self, *key: int) -> torch.Generator:
        """A CPU generator seeded from (seed, *key): resumable and shardable without saving RNG state."""
        return torch.Generator().manual_seed(hash((self.seed, *key)) & 0x7FFF_FFFF_FFFF)

    def build_backbone(self) -> nn.Module:
        backbone_cfg = EasyConfig(dict(self.d['backbone']))
        backbone_cfg.setdefault('num_classes', self.num_classes)
        return build_model_from_cfg(backbone_cfg).to(self.device)

    def synthetic_clouds(self, slots: Tensor, num_points: int, generator: torch.Generator | None) -> Tensor:
        """Synthesize, normalise to the unit sphere, canonicalise: the same path in matching, inner loop, export."""
        slots = slots.to(self.device)
        clouds = normalize_to_unit_sphere(self.synthesizer.synthesize(slots, num_points, generator))
        return self.rotator(clouds, slots=self.synthesizer.cloud_slots(slots))

    def initialize(self) -> dict:
        """Start the synthesizer from the real clouds its `select_from_pool` picks (random, herding, k-center),
        if any; the engine's seed draws them. The picks are made on the clouds as matching and training see
        them (`selection_pool`); the synthesizer starts from the picked clouds as the pool stores them."""
        selection_pool = self.selection_pool()
        selection = self.synthesizer.select_from_pool(selection_pool, torch.Generator().manual_seed(self.seed))
        if selection is None:
            return {}
        clouds, index = selection
        canonical = selection_pool is not self.pool
        if canonical:   # the clouds as stored: matching and training canonicalise them again
            clouds = gather_clouds(self.pool, index)
        report = self.synthesizer.initialize_from_real(clouds.to(self.device))
        if canonical:
            report['selection_frame'] = selection_pool.rotation['canonicaliser']['NAME']
        report.update(self.selection_network_report())
        report['real_indices'] = index.tolist()
        logger.info('synthesizer initialised from real clouds: %s', {k: v for k, v in report.items() if k != 'real_indices'})
        return report

    def selection_network_report(self) -> dict:
        """The selection network the synthesizer's coreset rule used (none: {}), as the init report gives it:
        `training_seconds` (measured here, or recorded in the `embed_cache` file it was loaded from), `from_cache`,
        and `charged_seconds`, what `run` adds to the measured start: a loaded network's recorded training, so that a
        run whose network another run trained spends the budget that training cost too, as the run that trained it
        did (its training is inside that run's measured start)."""
        selection = getattr(self.synthesizer, 'selection', None)
        training = getattr(selection, 'network_training', None)
        if training is None:
            return {}
        # a file without recorded seconds (written before they were) charges nothing: `embedding_net` warns of it
        charged = training.seconds if training.loaded and training.seconds is not None else 0.0
        if charged:
            logger.info('the coreset selection network was loaded from embed_cache: its recorded training time, '
                        '%.1f s, is charged to the run\'s clock (the budget)', charged)
        return {'selection_network': {'training_seconds': training.seconds, 'from_cache': training.loaded,
                                      'charged_seconds': charged}}

    def selection_pool(self) -> RealPool:
        """The pool a coreset rule picks from: under a fixed canonicaliser (a rotator without parameters, e.g. PCA +
        sign on rotated data) the canonicalised clouds, so that the selection network learns, and the picks
        represent, the clouds in the frame the student trains in; else the pool itself. A learned rotator is not
        trained yet when the picks are made, and a random pick does not look at the clouds."""
        selection = getattr(self.synthesizer, 'selection', None)
        if selection is None or selection.rule == 'random' or isinstance(self.rotator, IdentityRotator) \
                or getattr(self.rotator, 'per_slot', False) or any(True for _ in self.rotator.parameters()):
            return self.pool
        with torch.no_grad():
            pos = torch.cat([self.rotator(normalize_to_unit_sphere(chunk.to(self.device))).cpu()
                             for chunk in self.pool.pos.split(1024)])
        rotation = {**self.pool.rotation, 'canonicaliser': dict(self.d['rotator'])}
        return RealPool(pos, self.pool.labels, self.pool.class_names, self.pool.name, rotation=rotation)

    # --------------------------------------------------------------------------------------- loop
    def run(self, resume: bool = True) -> DistillResult:
        d = self.d
        iterations, outer, inner = d['iterations'], d['outer_loop'], d['inner_loop']
        budget = d['budget_minutes']
        budget_s = float(budget) * 60 if budget else math.inf
        checkpoint_every, eval_every, log_every = d['checkpoint_every'], d['eval_every'], d['log_every']
        eval_minutes = d['eval_every_minutes']
        if not (resume and self.load_checkpoint()):
            start_init = time.perf_counter()
            self.init_report = self.initialize()
            if self.init_report and iterations > 0:   # a run of no iterations exports its start as the artifact
                self._write_artifact(self.run_dir / START_NAME, {'start': True})
            # a selection network loaded from embed_cache is charged the training it recorded (`selection_network_report`)
            charged = (self.init_report.get('selection_network') or {}).get('charged_seconds', 0.0)
            self.elapsed = time.perf_counter() - start_init + charged
        # the next timed evaluation, counted from the run's elapsed time (a resumed run's included)
        next_eval_s = eval_minutes * 60 * (1 + int(self.elapsed // (eval_minutes * 60))) if eval_minutes else math.inf
        distributed.broadcast_module(self.synthesizer)
        distributed.broadcast_module(self.rotator)
        main = distributed.is_main()
        if self.stopped_by_budget:   # restored: the run ended at its budget, and resuming it only exports it again
            logger.info('the run was stopped by its wall-clock budget after %d iterations; exporting it again',
                        self.iteration)
        bar = tqdm(total=iterations, initial=self.iteration, disable=bar_disabled(d['progress'] and main),
                   desc='distill', dynamic_ncols=True)
        iteration_seconds = self.iteration_seconds   # the next iteration is expected to take their mean
        while self.iteration < iterations and not self.stopped_by_budget:
            # The budget is a cap: an iteration starts only if it is expected to end within it (an iteration of a
            # generator at 10 clouds per class takes minutes; stopping after the budget would give that method more).
            expected_s = sum(iteration_seconds) / len(iteration_seconds) if iteration_seconds else 0.0
            # rank 0's clock decides for all
            if distributed.decision_of_main(self.elapsed + expected_s > budget_s, self.device):
                self.stopped_by_budget = True
                break
            started = time.perf_counter()
            loss = self.run_iteration(self.iteration, outer, inner)
            self.loss_history.append(loss)
            self.iteration += 1
            iteration_seconds.append(time.perf_counter() - started)
            # every rank continues on rank 0's clock: the schedule and the tail below read it, and must fall at the
            # same iteration on every rank, or the synthesizer's copies drift apart
            self.elapsed = distributed.value_of_main(self.elapsed + iteration_seconds[-1], self.device)
            self.scheduler.step()   # after the clock: a schedule `by: time` reads it
            if self.tail_average is not None:
                self.tail_average.update(self.run_fraction(self.iteration, self.d['tail_average']['by']))
            bar.total = expected_iterations(self.iteration, iterations, self.elapsed,
                                            sum(iteration_seconds) / len(iteration_seconds), budget_s)
            bar.update(1)
            bar.set_postfix(loss=f'{loss:.4f}')
            if self.iteration % log_every == 0 or self.iteration == iterations:
                rate = self.iteration / max(self.elapsed, 1e-9)
                eta = min((iterations - self.iteration) / max(rate, 1e-9), max(budget_s - self.elapsed, 0))
                logger.info('step %d/%d | loss %.4f | syn_lr %.1e | %.2f it/s | elapsed %s | eta %s', self.iteration,
                            iterations, loss, self.optimizer.param_groups[0]['lr'], rate,
                            _clock(self.elapsed), _clock(eta))
            due_by_time = self.elapsed >= next_eval_s
            if due_by_time:
                next_eval_s += eval_minutes * 60
            if main and self.evaluate_fn is not None and (due_by_time or (eval_every and self.iteration % eval_every == 0)):
                result = self.evaluate_fn(self, self.iteration)
                result.update(iteration=self.iteration, minutes=self.elapsed / 60)
                self.evaluations.append(result)
                logger.info('evaluation at step %d (%.1f min): %s', self.iteration, self.elapsed / 60, result)
            if checkpoint_every and self.iteration % checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        if self.stopped_by_budget:
            logger.info('wall-clock budget of %.1f min: stopped after %d iterations (%.1f min), the next one would '
                        'pass it; exporting', budget_s / 60, self.iteration, self.elapsed / 60)
        self.save_checkpoint()
        artifact = self.export()
        start = self.run_dir / START_NAME
        start = start if self.init_report and self.iteration > 0 and start.is_file() else None
        return DistillResult(artifact, self.iteration, self.elapsed, self.stopped_by_budget, self.loss_history,
                             self.evaluations, start)

    def run_iteration(self, iteration: int, outer: int, inner: int) -> float:
        """One iteration: a fresh backbone (or one the objective keeps: `iteration_backbone`), `outer` synthesizer
        steps, inner training in between."""
        torch.manual_seed(hash((self.seed, iteration, 0)) & 0x7FFF_FFFF_FFFF)   # backbone init and any op RNG
        num_points = int(self.d['num_points'])
        real_generator = self._generator(iteration, 6)
        backbone = self.objective.iteration_backbone(
            self.build_backbone(), iteration, lambda size: self.real_batch(size, num_points, real_generator))
        trains_backbone = self.objective.trains_backbone and outer > 1
        if not self.objective.trains_backbone:
            backbone.requires_grad_(False)
        net_optimizer = torch.optim.SGD(backbone.parameters(), lr=self.d['net_lr'])
        total = 0.0
        all_classes = isinstance(self.objective, SetObjective)
        for step in range(outer):
            self.optimizer.zero_grad(set_to_none=True)
            if self.objective_optimizer is not None:
                self.objective_optimizer.zero_grad(set_to_none=True)
            if all_classes:
                total += self.match_all_classes(backbone, iteration, step, num_points)
            else:
                total += self.accumulate_matching_gradients(backbone, iteration, step, num_points)
            self.optimizer.step()
            self.synthesizer.project_()
            if self.objective_optimizer is not None:
                self.objective_optimizer.step()
            if step == outer - 1 or not trains_backbone:
                continue
            self.train_backbone(backbone, net_optimizer, inner, num_points, self._generator(iteration, 3, step))
        return total / ((1 if all_classes else self.num_classes) * outer)

    def accumulate_matching_gradients(self, backbone: nn.Module, iteration: int, step: int, num_points: int) -> float:
        """One outer step's matching: every class of this process's shard, gradients summed over processes.

        Classes go in chunks (`class_chunk`): each chunk's real batches and synthetic clouds go through the
        objective's `match_classes` and are back-propagated at once, so a chunk's graph is freed before the next
        and memory is bounded by the chunk, not the number of classes. Returns the summed loss.
        """
        batch_real = min(int(self.d['batch_real']), int(self.pool.counts.min()))   # equal batches per class
        classes = distributed.shard(range(self.num_classes))
        chunk = self.class_chunk(backbone, batch_real, num_points)
        total = 0.0
        for start in range(0, len(classes), chunk):
            labels = torch.tensor(classes[start:start + chunk])
            real = torch.stack([self.pool.sample(int(c), batch_real, num_points, self._generator(iteration, 1, step, int(c)))
                                for c in labels])
            real = self.rotator(real.flatten(0, 1).to(self.device)).detach().view(len(labels), batch_real, num_points, 3)
            syn = self.class_clouds(labels, num_points, [self._generator(iteration, 2, step, int(c)) for c in labels])
            losses = self.objective.match_classes(backbone, syn, real, labels.to(self.device))
            self.check_finite(losses, labels.tolist(), iteration, step)
            # frees this chunk's graph (memory does not grow with the classes); `inputs` skips the backbone's
            # weight gradients of the second-order graph, which nothing uses
            losses.sum().backward(inputs=self.matched_parameters)
            total += losses.detach().sum().item()
        distributed.all_reduce_gradients(self.parameters)
        return distributed.sum_scalar(total, self.device)

    def real_batch(self, size: int, num_points: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """`size` real clouds drawn from the whole pool, with their labels, as matching sees real clouds
        (subsampled, renormalised, canonicalised by the rotator, no gradient)."""
        index = torch.randint(len(self.pool.labels), (size,), generator=generator)
        pos = subsample_points(self.pool.pos[index], num_points, generator=generator).to(self.device)
        with torch.no_grad():
            pos = self.rotator(pos)
        return pos, self.pool.labels[index].to(self.device)

    def check_finite(self, losses: Tensor, labels: list[int], iteration: int, step: int) -> None:
        """A non-finite matching loss stops the run, naming the step, the component and the class."""
        bad = ~torch.isfinite(losses.detach())
        if bad.any():
            label = labels[int(bad.nonzero()[0, 0])]
            raise FloatingPointError(f'objective {type(self.objective).__name__} returned '
                                     f'{losses.detach()[bad][0].item()} at iteration {iteration}, outer step {step} '
                                     f'(class {label}: {self.pool.class_names[label]}). Lower the synthesizer '
                                     f'learning rate or check the data.')

    def class_chunk(self, backbone: nn.Module, batch_real: int, num_points: int) -> int:
        """Classes matched together: 1 for a backbone whose batches share statistics (BatchNorm in train mode),
        else as many as fit `distill.chunk_points` real and synthetic points (at least one class)."""
        if not getattr(backbone, 'per_sample_separable', False):
            return 1
        per_class = (batch_real + self.synthesizer.cpc) * num_points
        return max(1, min(self.num_classes, (self.d['chunk_points'] or DEFAULT_CHUNK_POINTS) // per_class))

    def class_clouds(self, labels: Tensor, num_points: int, generators: list[torch.Generator]) -> Tensor:
        """(G, cpc, N, 3) synthetic clouds of G classes, class g's drawn from generators[g]; the same path as
        `synthetic_clouds` (synthesize, normalise, canonicalise), with one synthesizer call for all classes."""
        slots = torch.cat([self.synthesizer.slots_of_class(int(c)) for c in labels]).to(self.device)
        clouds = self.synthesizer.synthesize_classes(labels, num_points, generators)
        return self.rotator(normalize_to_unit_sphere(clouds.flatten(0, 1)),
                            slots=self.synthesizer.cloud_slots(slots)).view(*clouds.shape)

    def match_all_classes(self, backbone: nn.Module, iteration: int, step: int, num_points: int) -> float:
        """One outer step of an objective that compares the whole synthetic set at once (trajectory matching).

        All slots are synthesized together and the objective's one scalar loss is back-propagated (to the
        synthesizer, the rotator and the objective's own parameters). Nothing is sharded: every process draws
        the same (seed, iteration, step) streams, computes the same loss and gradients, so none are reduced.
        """
        slots = torch.arange(self.synthesizer.num_slots)
        syn = self.synthetic_clouds(slots, num_points, self._generator(iteration, 2, step))
        labels = self.synthesizer.cloud_labels.to(self.device)
        loss = self.objective.match_all(backbone, syn, labels, self._generator(iteration, 5, step))
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f'objective {type(self.objective).__name__} returned {loss.item()} at iteration '
                                     f'{iteration}, outer step {step}. Lower the synthesizer learning rate or check '
                                     f'the data.')
        if loss.requires_grad:   # a zero-step unroll (syn_steps 0) is constant
            loss.backward()
        return loss.item()

    def _prepare_objective(self) -> torch.optim.Optimizer | None:
        """Objectives with state of their own (trajectory matching: expert buffer, learnable step size).

        Runs once, at construction: the experts' one-off training is not counted in `elapsed` (the budget);
        its seconds are logged and kept in `objective_setup_seconds`. Returns the objective's optimizer, if any.
        """
        self.objective_setup_seconds = float(self.objective.prepare(self.pool, self.cfg, self.run_dir, self.device,
                                                                    self.build_backbone))
        return self.objective.optimizer() if self.objective.parameters() else None

    def _objective_state(self) -> dict:
        state = {'objective': self.objective.state_dict()}
        if self.objective_optimizer is not None:
            state['objective_optimizer'] = self.objective_optimizer.state_dict()
        return state

    def train_backbone(self, backbone: nn.Module, optimizer: torch.optim.Optimizer, epochs: int,
                       num_points: int, generator: torch.Generator) -> None:
        """The inner loop: `epochs` of SGD on freshly synthesized, detached, normalised clouds."""
        with torch.no_grad():
            slots = torch.arange(self.synthesizer.num_slots)
            clouds = self.synthetic_clouds(slots, num_points, generator)
        labels = self.synthesizer.cloud_labels.to(self.device)
        fit_epochs(optimizer, lambda pos, y: F.cross_entropy(backbone(pos), y), lambda epoch, g: (clouds, labels),
                   epochs=epochs, batch_size=self.d['inner_batch'], generator=generator, device=self.device)

    # --------------------------------------------------------------------------- checkpoint/export
    def state(self) -> dict:
        return {'synthesizer': self.synthesizer.state_dict(), 'rotator': self.rotator.state_dict(),
                'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
                'iteration': self.iteration, 'elapsed': self.elapsed, 'loss_history': list(self.loss_history),
                'iteration_seconds': list(self.iteration_seconds), 'stopped_by_budget': self.stopped_by_budget,
                'evaluations': [dict(e) for e in self.evaluations], 'init_report': dict(self.init_report),
                **self._objective_state(),
                **({} if self.tail_average is None else {'tail_average': self.tail_average.state_dict()})}

    def save_checkpoint(self) -> Path:
        """Atomic: written to a temporary file, then renamed over the previous checkpoint (rank 0 only)."""
        path = self.run_dir / CHECKPOINT_NAME
        if not distributed.is_main():
            return path
        with atomic_path(path) as temporary:
            torch.save(self.state(), temporary)
        return path

    def load_checkpoint(self) -> bool:
        path = self.run_dir / CHECKPOINT_NAME
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.synthesizer.load_state_dict(state['synthesizer'])
            self.rotator.load_state_dict(state['rotator'])
            self.optimizer.load_state_dict(state['optimizer'])
            self.scheduler.load_state_dict(state['scheduler'])
            # the objective's own state: trajectory matching's learned step size, DM's semi-trained networks
            self.objective.load_state_dict(state.get('objective', {}))
            if self.tail_average is not None:
                self.tail_average.load_state_dict(state['tail_average'])
            if self.objective_optimizer is not None:
                self.objective_optimizer.load_state_dict(state['objective_optimizer'])
        except Exception as e:
            raise RuntimeError(f'cannot resume from {path}: {e}. It was written by another config or is '
                               f'damaged; use a new run_dir or delete the checkpoint.') from e
        self.iteration, self.elapsed = int(state['iteration']), float(state['elapsed'])
        self.loss_history, self.evaluations = list(state['loss_history']), list(state['evaluations'])
        # absent from a checkpoint written before they were kept: an empty record (the next iteration is expected to
        # cost nothing) and no stop, as such a checkpoint resumed then
        self.iteration_seconds = [float(s) for s in state.get('iteration_seconds', [])]
        self.stopped_by_budget = bool(state.get('stopped_by_budget', False))
        self.init_report = dict(state.get('init_report') or {})   # what the start did, for metrics.json
        logger.info('resumed from %s at iteration %d (%.1f min done)', path, self.iteration, self.elapsed / 60)
        return True

    def metadata(self) -> dict:
        accounting = self.synthesizer.accounting(self.d['export_num_points'])
        return {'synthesizer': dict(self.d['synthesizer']), 'objective': dict(self.d['objective']),
                'rotator': dict(self.d['rotator']),
                'backbone': dict(self.d['backbone']),
                'dataset': {'name': self.pool.name, 'num_classes': self.num_classes, 'class_names': self.pool.class_names,
                            'rotation': dict(getattr(self.pool, 'rotation', None) or {'mode': 'none'})},
                'cpc': self.synthesizer.cpc, 'num_points': accounting['points_per_training_cloud'],
                'accounting': accounting,
                'iterations_done': self.iteration, 'seconds': round(self.elapsed, 1), 'seed': self.seed}

    def export(self, path: str | os.PathLike | None = None) -> Path:
        """The run's final artifact (default `<run_dir>/artifact.safetensors`), written once `run` has ended:
        generator weights or the point set.

        With `distill.tail_average` it holds the mean of the run's tail iterates, and its last iterate goes beside
        it (`artifact-last.safetensors`) so the two can be evaluated side by side. A set taken mid-run is a
        `snapshot`."""
        path = Path(path) if path else self.run_dir / ARTIFACT_NAME
        tail = self.tail_average
        if tail is None or tail.iterates == 0:
            if tail is not None:
                logger.warning('distill.tail_average: the run ended before its tail (%d iterations); exporting its '
                               'last iterate', self.iteration)
            return self._write_artifact(path, {})
        last = self._write_artifact(path.with_name(path.stem + LAST_ITERATE_SUFFIX + path.suffix), {})
        logger.info('exporting the mean of the last %d iterates (the last iterate: %s)', tail.iterates, last.name)
        with tail.swapped_in():
            return self._write_artifact(path, {'tail_average': {**dict(self.d['tail_average']),
                                                                'iterates': tail.iterates}})

    def snapshot(self, path: str | os.PathLike) -> Path:
        """The set as it stands mid-run (an evaluation's `snapshots/stepNNNNN.safetensors`): the live iterate,
        whatever the tail mean holds so far; the mean and the last iterate beside it are the final `export`'s."""
        return self._write_artifact(Path(path), {})

    def _write_artifact(self, path: Path, extra_metadata: Mapping[str, Any]) -> Path:
        """The synthesizer and rotator as they stand, with the run's metadata and `extra_metadata`."""
        if not distributed.is_main():
            return path
        num_points = self.d['export_num_points']
        metadata = {**self.metadata(), **extra_metadata}
        if getattr(self.rotator, 'per_slot', False):
            # learned per-cloud poses are baked into the exported points; real clouds need no rotation after
            with torch.no_grad():
                slots = torch.arange(self.synthesizer.num_slots)
                num_points = min(num_points, self.synthesizer.max_points or num_points)
                pos = self.synthetic_clouds(slots, num_points, torch.Generator().manual_seed(self.seed))
            tensors, kind = {'pos': pos.cpu().contiguous(), 'y': self.synthesizer.cloud_labels.cpu().clone()}, 'points'
            metadata.update(rotator={'NAME': 'IdentityRotator'}, baked_rotator=metadata['rotator'])
        else:
            tensors, kind = synthesizer_tensors(self.synthesizer, num_points, self.seed)
            # a learned canonicaliser (LearnedSignRotator) travels with the set: whoever trains on it needs it
            tensors.update({ROTATOR_PREFIX + k: v.detach().cpu().contiguous() for k, v in self.rotator.state_dict().items()})
        if kind == 'points':   # what the file holds, from the tensors themselves (a store may hold fewer points)
            metadata['num_points'] = metadata['accounting']['points_per_training_cloud'] = int(tensors['pos'].shape[1])
        return save_artifact(path, tensors, {**metadata, 'kind': kind})


def check_backbone_methods(backbone_cfg: Mapping[str, Any], objective) -> None:
    """Refuse a `distill.backbone` that lacks a method the objective calls (`backbone_methods`) or a keyword it
    passes to one (`backbone_keywords`), before any selection network, expert or matching step runs."""
    name = backbone_cfg.get('NAME')
    backbone_class = MODELS.module_dict.get(name)
    if backbone_class is None:   # an unknown NAME is the settings' error, named there
        return
    missing = [method for method in objective.backbone_methods() if not callable(getattr(backbone_class, method, None))]
    if missing:
        raise TypeError(f'{type(objective).__name__} calls the backbone\'s {", ".join(missing)}; distill.backbone '
                        f'{name} has no {", ".join(missing)}: use DistillPointNet, or a backbone with them')
    for method, keywords in objective.backbone_keywords().items():
        parameters = inspect.signature(getattr(backbone_class, method)).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        lacking = [keyword for keyword in keywords if keyword not in parameters]
        if lacking:
            raise TypeError(f'{type(objective).__name__} calls the backbone\'s {method} with {", ".join(lacking)}; '
                            f'distill.backbone {name}\'s {method} does not take it: use DistillPointNet, or give '
                            f'{method} that keyword')


def build_optimizer(cfg: Mapping[str, Any], params) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    name = str(cfg.pop('NAME', 'adam')).lower()
    if name not in SYN_OPTIMIZERS:
        raise KeyError(f'unknown optimizer {name!r} in distill.syn_optimizer; choose one of {sorted(SYN_OPTIMIZERS)}')
    return SYN_OPTIMIZERS[name](params, **cfg)


def _rotator_args(cfg: Mapping[str, Any] | None, num_slots: int) -> dict:
    """`num_slots` for rotators with per-synthetic-cloud parameters (class attribute `per_slot`)."""
    cls = ROTATORS.module_dict.get((cfg or {}).get('NAME')) if isinstance(cfg, Mapping) else None
    return {'num_slots': num_slots} if getattr(cls, 'per_slot', False) else {}


def _parameter_groups(synthesizer: Synthesizer, rotator: nn.Module, rot_cfg: Mapping[str, Any] | None,
                      syn_lr: float) -> tuple[list[dict], list[Callable[[int], float]]]:
    """Optimizer param groups, the synthesizer's first, and the LR schedules of the rotator's own groups (last).

    The synthesizer's groups are its `param_groups()` (MorphedClouds: the blend logits at `lr_scale` times
    `syn_optimizer.lr`). Without `distill.rotator_optimizer` the rotator's parameters join the synthesizer's
    first group under `syn_optimizer` and `syn_scheduler`. With it, the rotator's parameters get their own groups
    (its `param_groups()` if it has one, e.g. EulerRotator's per-axis `lr_scale`) in the same optimizer, with
    `lr` x scale and the other optimizer keys given there, and their own StepLR (`step_size` iterations,
    x`gamma`; no step_size = constant); the synthesizer's groups keep `syn_scheduler`.
    """
    groups = [_scaled(group, syn_lr) for group in synthesizer.param_groups()]
    rot_params = list(rotator.parameters())
    if not rot_cfg or not rot_params:
        groups[0]['params'] = list(groups[0]['params']) + rot_params
        return groups, []
    rot_cfg = dict(rot_cfg)
    unknown = set(rot_cfg) - {'lr', 'momentum', 'weight_decay', 'betas', 'step_size', 'gamma'}
    if unknown or 'lr' not in rot_cfg:
        raise ValueError(f'distill.rotator_optimizer takes lr (required), momentum, weight_decay, betas, step_size '
                         f'and gamma; got {sorted(rot_cfg)}')
    step_size, rot_gamma = rot_cfg.pop('step_size', None), float(rot_cfg.pop('gamma', 1.0))
    rot_schedule = _step_schedule(int(step_size), rot_gamma) if step_size else _step_schedule(1, 1.0)
    base_lr = float(rot_cfg.pop('lr'))
    rot_groups = rotator.param_groups() if hasattr(rotator, 'param_groups') else [{'params': rot_params}]
    groups += [{**rot_cfg, **_scaled({'lr_scale': 1.0, **group}, base_lr)} for group in rot_groups]
    return groups, [rot_schedule] * len(rot_groups)


def _scaled(group: Mapping[str, Any], lr: float) -> dict:
    """A param group with its `lr_scale` turned into an `lr` (a group without one keeps the optimizer's)."""
    group = dict(group)
    if 'lr_scale' in group:
        group['lr'] = lr * float(group.pop('lr_scale'))
    return group


def _step_schedule(step_size: int, gamma: float) -> Callable[[int], float]:
    return lambda iteration: gamma ** (iteration // step_size)


def expected_iterations(done: int, iterations: int, elapsed: float, seconds_per_iteration: float,
                        budget_s: float) -> int:
    """The iterations a run will end with: all of them, or, under a wall-clock budget, those that fit it at the
    mean pace so far (the progress bar's total, so that its ETA is the budget's, not that of every iteration)."""
    if math.isinf(budget_s) or seconds_per_iteration <= 0:
        return iterations
    fitting = int(max(budget_s - elapsed, 0.0) // seconds_per_iteration)
    return max(done, min(iterations, done + fitting))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}' if seconds >= 3600 else f'{seconds // 60:02d}:{seconds % 60:02d}'
