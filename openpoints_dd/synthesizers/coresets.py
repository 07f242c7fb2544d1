"""Coreset selection rules (Random, Herding, K-Center greedy, facility location) and the embedding they select in.

Used by `ExplicitPoints` and `PointGenerator` to pick their initial clouds from the real pool (baselines
spec §B.6); with `distill.iterations: 0` an ExplicitPoints selection is the distilled set (the coreset baselines).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.config import resolve_path
from ..utils.fit import fit_epochs
from ..utils.geometry import normalize_to_unit_sphere, subsample_points

logger = logging.getLogger(__name__)


RULES = ('random', 'herding', 'kcenter', 'facility')
#: part of a cached embedding network's identity: raise it when `train_embedding_net` changes what it trains
EMBEDDING_VERSION = 1


@dataclass(frozen=True)
class NetworkTraining:
    """The training of the selection network a selection used.

    `seconds`: how long it took, measured in this process or, for a network `loaded` from `embed_cache`, recorded
    in the cache file when it was trained (None: a file written before the seconds were recorded). `loaded`: its
    training ran in another run, outside this process's clock, which a run's budget must then charge it.
    """

    seconds: float | None
    loaded: bool


@dataclass(frozen=True)
class CoresetSelection:
    """Which real clouds of each class a synthesizer starts from.

    'random' draws uniformly; 'herding', 'kcenter' and 'facility' pick greedily in the embedding of a
    DistillPointNet trained for `embed_steps` Adam steps on the whole real set (`embed_*` are its settings).
    Steps, not epochs: a small dataset (a few hundred clouds) then still gets a trained embedding, and the cost is
    the same for any dataset size. `kcenter_first`: the first K-Center pick, 'mean' (the cloud nearest the class
    mean, as SADM) or 'random' (DeepCore). `facility_sigma`: the RBF width of facility location on unit-length
    embeddings (3D-Pruner: 0.5). `embed_cache`: a folder where the trained embedding network is kept, one file
    per (dataset, settings, seed): Herding, K-Center and facility location runs of one seed then select in the
    same embedding, trained once (None: always train). The file records the network's training seconds, which
    `network_training` reports, so that a run that loads it can charge them to its budget (`Distiller.initialize`).
    """

    rule: str = 'random'
    kcenter_first: str = 'mean'
    embed_steps: int = 500
    embed_points: int = 256
    embed_batch: int = 64
    embed_lr: float = 1e-3
    embed_widths: tuple[int, ...] = (64, 128, 1024)
    facility_sigma: float = 0.5
    embed_cache: str | None = None
    #: the network the last `select` (or `embedding_net`) used, under 'network'; not a setting (not compared)
    _used: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def network_training(self) -> NetworkTraining | None:
        """The training of the selection network the last selection used (None: none yet, or the 'random' rule)."""
        return self._used.get('network')

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f'coreset selection: rule must be one of {RULES}, got {self.rule!r}')
        if self.kcenter_first not in ('mean', 'random'):
            raise ValueError(f"coreset selection: kcenter_first must be 'mean' or 'random', got {self.kcenter_first!r}")
        if int(self.embed_steps) < 0 or int(self.embed_points) < 1 or int(self.embed_batch) < 1:
            raise ValueError(f'coreset selection: need embed_steps >= 0, embed_points >= 1 and embed_batch >= 1, '
                             f'got {self.embed_steps}, {self.embed_points}, {self.embed_batch}')
        if float(self.facility_sigma) <= 0:
            raise ValueError(f'coreset selection: facility_sigma must be > 0, got {self.facility_sigma!r}')
        for name, kind in (('embed_steps', int), ('embed_points', int), ('embed_batch', int), ('embed_lr', float),
                           ('facility_sigma', float)):
            object.__setattr__(self, name, kind(getattr(self, name)))   # YAML may give strings or floats
        object.__setattr__(self, 'embed_widths', tuple(int(w) for w in self.embed_widths))

    def select(self, pool, cpc: int, generator: torch.Generator,
               device: torch.device | str = 'cpu') -> tuple[Tensor, Tensor]:
        """((K·cpc, N, 3) unit-sphere clouds, class-major; (K·cpc,) their pool indices), seeded by `generator`."""
        if self.rule == 'random':
            return pool.random_per_class(cpc, generator)
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        net = self.embedding_net(pool, seed, device)
        features = embed_pool(net, pool, num_points=self.embed_points, batch_size=self.embed_batch, seed=seed)
        index = select_per_class(features, pool, cpc, self.rule, self.kcenter_first, generator, self.facility_sigma)
        return gather_clouds(pool, index), index

    def embedding_net(self, pool, seed: int, device: torch.device | str = 'cpu'):
        """The selection network for `pool` and `seed`: from `embed_cache` if it holds it, else trained (and kept)."""
        settings = {'steps': self.embed_steps, 'num_points': self.embed_points, 'batch_size': self.embed_batch,
                    'lr': self.embed_lr, 'widths': list(self.embed_widths), 'seed': seed}

        def train():
            start = time.perf_counter()
            net = train_embedding_net(pool, **settings, device=device)
            self._used['network'] = NetworkTraining(seconds=time.perf_counter() - start, loaded=False)
            return net

        if self.embed_cache is None:
            return train()
        from ..data.artifact import read_tensor_file, save_tensor_file
        from ..models.pointnet import DistillPointNet
        identity = {'network': EMBEDDING_VERSION, 'dataset': pool.name, 'class_names': list(pool.class_names),
                    'clouds': len(pool.labels), 'points': int(pool.pos.shape[1]), **settings}
        # a rotated or canonicalised pool has the same name, classes and sizes as the aligned one but other clouds;
        # an aligned pool's identity stays as it was, so the networks kept for aligned data remain valid
        rotation = dict(getattr(pool, 'rotation', None) or {'mode': 'none'})
        if rotation != {'mode': 'none'}:
            identity['rotation'] = rotation
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(resolve_path(self.embed_cache)) / f'{pool.name}-{key}.safetensors'
        net = DistillPointNet(num_classes=pool.num_classes, widths=tuple(self.embed_widths)).to(device)
        if path.is_file():
            tensors, metadata = read_tensor_file(path, 'coreset embedding', 'a coreset selection (delete the file)')
            if metadata.get('kind') == 'coreset embedding' and metadata.get('identity') == identity:
                net.load_state_dict(tensors)
                seconds = metadata.get('training_seconds')
                if seconds is None:
                    logger.warning('coreset embedding net: %s was written before the cache recorded training times: '
                                   'its training time cannot be charged to this run\'s budget (delete the file to '
                                   'train the network again and record it)', path)
                logger.info('coreset embedding net: loaded %s (trained in %s)', path,
                            'an unrecorded time' if seconds is None else f'{float(seconds):.1f} s')
                self._used['network'] = NetworkTraining(seconds=None if seconds is None else float(seconds), loaded=True)
                return net.eval()
            logger.warning('coreset embedding net: %s is not this selection\'s network; training it again', path)
        net = train()
        save_tensor_file(path, net.state_dict(), {'kind': 'coreset embedding', 'identity': identity,
                                                  'training_seconds': self._used['network'].seconds})
        return net

    def describe(self) -> str:
        """The settings that matter for `rule`, for a module's repr."""
        if self.rule == 'random':
            return ''
        return (f'kcenter_first={self.kcenter_first!r}, facility_sigma={self.facility_sigma}, embed_steps={self.embed_steps}, '
                f'embed_points={self.embed_points}, embed_batch={self.embed_batch}, embed_lr={self.embed_lr}, '
                f'embed_widths={list(self.embed_widths)}')


def random(num_items: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """`k` distinct indices drawn uniformly from range(num_items): (k,) int64."""
    if not 0 < k <= num_items:
        raise ValueError(f'cannot pick {k} of {num_items} items; need 1 <= k <= {num_items}')
    return torch.randperm(num_items, generator=generator)[:k]


def herding(features: Tensor, k: int) -> Tensor:
    """Greedy mean matching (Welling 2009; iCaRL's herding), the minimising rule of baselines spec §B.6.

    At step t = 1..k pick the unselected x minimising ||t·mu - (sum of picked features + phi(x))||, so the
    running mean of the picks stays as close as possible to the mean mu. The first pick is the item
    nearest to mu. DeepCore takes the argmax here, which the spec calls an inversion; this is the argmin.

    Args:
        features: (M, D) floating point embeddings of one class.
        k: number of picks, 1 <= k <= M.

    Returns:
        (k,) int64 indices into `features`, in pick order.
    """
    _check_features(features, k)
    features = features.double()
    mean = features.mean(dim=0)
    picked_sum = torch.zeros_like(mean)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    picks = []
    for step in range(1, k + 1):
        distance = (step * mean - picked_sum - features).norm(dim=1)
        distance[~available] = float('inf')
        index = int(distance.argmin())
        picks.append(index)
        available[index] = False
        picked_sum = picked_sum + features[index]
    return torch.tensor(picks, dtype=torch.long)


def _herding_naive(features: Tensor, k: int) -> list[int]:
    """Readable twin of `herding`: for every step, try every unpicked candidate one by one."""
    rows = [[float(v) for v in row] for row in features.double()]
    dim = len(rows[0])
    mean = [sum(row[d] for row in rows) / len(rows) for d in range(dim)]
    picks: list[int] = []
    for step in range(1, k + 1):
        best, best_distance = None, float('inf')
        for candidate in range(len(rows)):
            if candidate in picks:
                continue
            chosen = picks + [candidate]
            distance = sum((step * mean[d] - sum(rows[i][d] for i in chosen)) ** 2 for d in range(dim)) ** 0.5
            if distance < best_distance:
                best, best_distance = candidate, distance
        picks.append(best)
    return picks


def k_center(features: Tensor, k: int, first: int) -> Tensor:
    """K-Center greedy (Sener & Savarese, ICLR 2018), baselines spec §B.6.

    Starting from `first`, repeatedly add the item whose distance to its nearest chosen centre is the
    largest (farthest-first traversal), keeping a running per-item minimum distance.

    Args:
        features: (M, D) floating point embeddings of one class.
        k: number of centres, 1 <= k <= M.
        first: index of the first centre (SADM: the herding first pick, i.e. nearest to the mean).

    Returns:
        (k,) int64 indices into `features`, in pick order.
    """
    _check_features(features, k)
    if not 0 <= first < len(features):
        raise ValueError(f'first must index one of the {len(features)} items, got {first}')
    features = features.double()
    picks = [int(first)]
    nearest = (features - features[first]).norm(dim=1)
    for _ in range(1, k):
        masked = nearest.clone()
        masked[picks] = -1.0   # duplicates of a centre (distance 0) are never re-picked
        index = int(masked.argmax())
        picks.append(index)
        nearest = torch.minimum(nearest, (features - features[index]).norm(dim=1))
    return torch.tensor(picks, dtype=torch.long)


def facility_location(features: Tensor, k: int, sigma: float = 0.5) -> Tensor:
    """Greedy facility location (3D-Pruner's rule; research/packing_and_soft_labels.md, document 2, §2.3, §2.7).

    On L2-normalised embeddings with sim(i, j) = exp(-||e_i - e_j||² / (2 sigma²)), greedily maximise
    F(S) = Σ_i max_{j in S} sim(i, j): each pick is the candidate with the largest gain Σ_i max(0, sim(i, j) - cov_i),
    where cov_i is item i's best similarity to the picks so far. Typical clouds that also cover the class's modes.

    Args:
        features: (M, D) floating point embeddings of one class.
        k: number of picks, 1 <= k <= M.
        sigma: the RBF width on unit-length embeddings. Default 0.5.

    Returns:
        (k,) int64 indices into `features`, in pick order (the first on ties).
    """
    _check_features(features, k)
    unit = F.normalize(features.double(), dim=1)
    similarity = torch.exp(-torch.cdist(unit, unit).square() / (2 * sigma ** 2))          # (M, M)
    coverage = torch.zeros(len(unit), dtype=torch.float64, device=unit.device)
    picks = []
    for _ in range(k):
        gain = (similarity - coverage.unsqueeze(1)).clamp_min(0).sum(dim=0)
        gain[picks] = -1.0
        index = int(gain.argmax())
        picks.append(index)
        coverage = torch.maximum(coverage, similarity[:, index])
    return torch.tensor(picks, dtype=torch.long)


def _facility_location_naive(features: Tensor, k: int, sigma: float = 0.5) -> list[int]:
    """Readable twin of `facility_location`: the objective F(S ∪ {j}) evaluated for every candidate j."""
    rows = F.normalize(features.double(), dim=1).tolist()

    def sim(a: list[float], b: list[float]) -> float:
        return math.exp(-sum((x - y) ** 2 for x, y in zip(a, b)) / (2 * sigma ** 2))

    def objective(chosen: list[int]) -> float:
        return sum(max(sim(row, rows[j]) for j in chosen) for row in rows)
    picks: list[int] = []
    for _ in range(k):
        candidates = [j for j in range(len(rows)) if j not in picks]
        picks.append(max(candidates, key=lambda j: (objective(picks + [j]), -j)))
    return picks


def nearest_to_mean(features: Tensor) -> int:
    """Index of the row of (M, D) `features` closest to their mean (herding's first pick)."""
    features = features.double()
    return int((features - features.mean(dim=0)).norm(dim=1).argmin())


def train_embedding_net(pool, *, steps: int, num_points: int, batch_size: int, lr: float,
                        widths: list[int], seed: int, device: torch.device | str = 'cpu'):
    """A DistillPointNet trained briefly (Adam, cross-entropy) on the whole real pool, for selection.

    Herding and K-Center select in the embedding of a network trained on the real set (DeepCore trains
    40 epochs; a few at low point count is enough to order clouds by class-typicality, and keeps the
    coreset baselines cheap on CPU).

    The batches walk through shuffled passes over the pool: each pass is a fresh permutation cut into
    batches of `batch_size`, the last one smaller when the pool size is not a multiple of it, and a new pass
    starts when one is used up. So `steps` = E·ceil(M / batch_size) gives exactly the batches (and the
    generator draws) of E epochs: ModelNet40's 9840 clouds at batch 64 make 154 steps per epoch.

    Args:
        pool: a `RealPool`.
        steps: Adam steps (0: the untrained network).
        num_points, batch_size, lr, widths: training settings (see `ExplicitPoints`).
        seed: seeds the network's initialisation, the shuffles and the point subsets.

    Returns:
        The trained network in eval mode.
    """
    from ..models.pointnet import DistillPointNet
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DistillPointNet(num_classes=pool.num_classes, widths=tuple(widths)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    start = time.perf_counter()
    log_every = max(1, steps // 10)
    progress = {'step': 0, 'total': 0.0, 'seen': 0}

    def batch_loss(clouds: Tensor, labels: Tensor) -> Tensor:
        pos = subsample_points(clouds, num_points, generator=generator).to(device)
        loss = F.cross_entropy(net(pos), labels.to(device))
        progress['step'] += 1
        progress['total'] += loss.item() * len(labels)
        progress['seen'] += len(labels)
        if progress['step'] % log_every == 0 or progress['step'] == steps:
            logger.info('coreset embedding net: step %d/%d, loss %.4f', progress['step'], steps,
                        progress['total'] / progress['seen'])
            progress['total'], progress['seen'] = 0.0, 0
        return loss

    passes = math.ceil(steps / max(math.ceil(len(pool.labels) / batch_size), 1))
    fit_epochs(optimizer, batch_loss, lambda epoch, g: (pool.pos, pool.labels), epochs=passes,
               batch_size=batch_size, generator=generator, max_steps=steps)
    logger.info('coreset embedding net: %d steps (%.1f passes over %d clouds) in %.1f s', steps,
                steps * batch_size / max(len(pool.labels), 1), len(pool.labels), time.perf_counter() - start)
    return net.eval()


@torch.no_grad()
def embed_pool(net, pool, *, num_points: int, batch_size: int, seed: int) -> Tensor:
    """(M, D) float32 embeddings (`net.embed`) of every pool cloud, on a fixed random point subset."""
    generator = torch.Generator().manual_seed(seed)
    device = next(net.parameters()).device
    chunks = []
    for begin in range(0, len(pool.labels), batch_size):
        pos = subsample_points(pool.pos[begin:begin + batch_size], num_points, generator=generator)
        chunks.append(net.embed(pos.to(device)).float().cpu())
    return torch.cat(chunks)


def select_per_class(features: Tensor, pool, per_class: int, method: str,
                     kcenter_first: str = 'mean', generator: torch.Generator | None = None,
                     facility_sigma: float = 0.5) -> Tensor:
    """Class-balanced selection: `per_class` pool indices of every class, class-major: (K·per_class,) int64."""
    picks = []
    for label in range(pool.num_classes):
        index = pool.indices_of_class(label)
        if len(index) < per_class:
            raise ValueError(f'class {pool.class_names[label]} has {len(index)} clouds, fewer than {per_class}')
        class_features = features[index]
        if method == 'herding':
            local = herding(class_features, per_class)
        elif method == 'kcenter':
            first = (nearest_to_mean(class_features) if kcenter_first == 'mean'
                     else int(torch.randint(len(index), (1,), generator=generator)))
            local = k_center(class_features, per_class, first)
        elif method == 'facility':
            local = facility_location(class_features, per_class, facility_sigma)
        else:
            raise ValueError(f"unknown coreset method {method!r}; choose 'herding', 'kcenter' or 'facility'")
        picks.append(index[local])
    return torch.cat(picks)


def gather_clouds(pool, index: Tensor) -> Tensor:
    """The selected pool clouds, unit-sphere normalised: (len(index), N, 3)."""
    return normalize_to_unit_sphere(pool.pos[index])


def _check_features(features: Tensor, k: int) -> None:
    if not torch.is_tensor(features) or features.ndim != 2 or not features.is_floating_point():
        shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
        raise ValueError(f'features must be a floating (M, D) tensor, got {shape}')
    if not 0 < k <= len(features):
        raise ValueError(f'cannot pick {k} of {len(features)} items; need 1 <= k <= {len(features)}')
