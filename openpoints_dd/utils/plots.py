"""Pictures of distilled sets and of runs (tools/visualize.py): matplotlib on the Agg backend, PNG files.

Figures are sized in whole panels (`panel_inches` × `dpi` pixels each) and saved without tight bounding
boxes, so a grid of R × C panels is exactly (R·panel, C·panel) pixels: scripts and tests can rely on it.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')  # no display on these machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data.real_pool import RealPool  # noqa: E402
from ..data.synthetic_set import SyntheticSet  # noqa: E402

_STEP = re.compile(r'step (\d+)/\d+ \| loss ([-+\d.eE]+|nan|inf)')
_EVAL = re.compile(r"evaluation at step (\d+) .*?'oa': ([-+\d.eE]+)")


def select_classes(class_names: Sequence[str], classes: Sequence[str] | None = None,
                   max_classes: int | None = None) -> list[int]:
    """Class indices to draw: the named (or numbered) ones, else the first `max_classes`, else all."""
    if classes:
        picked = []
        for item in classes:
            if item in class_names:
                picked.append(list(class_names).index(item))
            elif str(item).isdigit() and int(item) < len(class_names):
                picked.append(int(item))
            else:
                raise ValueError(f'unknown class {item!r}; the artifact has: {", ".join(class_names)}')
        return picked
    count = len(class_names) if max_classes is None else max(1, min(int(max_classes), len(class_names)))
    return list(range(count))


def render_clouds(artifact: str | os.PathLike, out_png: str | os.PathLike, *, num_points: int = 1024,
                  classes: Sequence[str] | None = None, max_classes: int | None = None,
                  real_dataset_cfg: Mapping[str, Any] | None = None, real_per_class: int | None = None,
                  seed: int = 0, panel_inches: float = 2.0, dpi: int = 80, point_size: float = 1.0) -> dict:
    """Draw an artifact's synthetic clouds, one panel per slot, one row per class; real clouds to their right.

    Args:
        artifact: a `.safetensors` artifact (points or generator; generators are sampled at `num_points`).
        out_png: output file.
        num_points: points per drawn cloud (a points artifact is cut to at most what it stores).
        classes: class names or indices to draw. Default None: the first `max_classes` (or all).
        max_classes: see `classes`. Default None.
        real_dataset_cfg: an openpoints dataset section (`common` + `train`); when given, `real_per_class` random
            train clouds of each drawn class follow the synthetic ones in the row, titled `real <class>`.
        real_per_class: real clouds per class. Default None: the artifact's clouds per class.
        seed: generator noise and real picks.
        panel_inches, dpi: each panel is `round(panel_inches * dpi)` pixels square.

    Returns:
        {'path', 'rows', 'cols', 'synthetic_panels', 'real_panels', 'width', 'height'} (pixels).

    Raises:
        ArtifactError: the artifact is missing or invalid.
        ValueError: an unknown class, or a real dataset whose classes differ from the artifact's.
    """
    synthetic = SyntheticSet(artifact)
    generator = torch.Generator().manual_seed(seed)
    points = num_points if synthetic.is_generator else min(num_points, synthetic.num_points)
    pos, labels = synthetic.sample(points, generator)
    picked = select_classes(synthetic.class_names, classes, max_classes)
    real_pool, n_real = None, 0
    if real_dataset_cfg is not None:
        real_pool = RealPool.from_dataset_cfg(real_dataset_cfg, split='train')
        if list(real_pool.class_names) != list(synthetic.class_names):
            raise ValueError(f'the real dataset {real_pool.name} has classes {real_pool.class_names[:5]}... but the '
                             f'artifact was distilled from {synthetic.class_names[:5]}...; give the dataset it came '
                             f'from')
        n_real = int(real_per_class or synthetic.cpc)
    cols = synthetic.cpc + n_real
    rows = len(picked)
    fig = plt.figure(figsize=(cols * panel_inches, rows * panel_inches), dpi=dpi)
    synthetic_panels = real_panels = 0
    for r, label in enumerate(picked):
        name = synthetic.class_names[label]
        slots = torch.nonzero(labels == label).flatten().tolist()
        for c, slot in enumerate(slots):
            _scatter(fig, rows, cols, r * cols + c + 1, pos[slot], f'{name} #{c}', point_size)
            synthetic_panels += 1
        if real_pool is not None:
            index = real_pool.indices_of_class(label)
            pick = index[torch.randperm(len(index), generator=generator)[:n_real]]
            for c, i in enumerate(pick.tolist()):
                cloud = real_pool.pos[i][torch.randperm(real_pool.pos.shape[1], generator=generator)[:points]]
                _scatter(fig, rows, cols, r * cols + synthetic.cpc + c + 1, cloud, f'real {name}', point_size,
                         color='tab:gray')
                real_panels += 1
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.02, wspace=0.02, hspace=0.12)
    out_png = _save(fig, out_png, dpi)
    width, height = round(cols * panel_inches * dpi), round(rows * panel_inches * dpi)
    return {'path': str(out_png), 'rows': rows, 'cols': cols, 'synthetic_panels': synthetic_panels,
            'real_panels': real_panels, 'width': width, 'height': height}


def read_run_curves(run_dir: str | os.PathLike) -> dict:
    """Loss and accuracy series of a run: a distillation (`loss_history`, `evaluations_during_distillation`),
    a tools/train.py run (`history`), or, without metrics.json, a distillation's log.txt.

    Returns:
        {'loss': ([x], [y]), 'accuracy': {name: ([x], [y])}, 'x_label', 'source'}.

    Raises:
        FileNotFoundError: neither metrics.json nor log.txt is in `run_dir`.
        ValueError: the files hold no curve.
    """
    run_dir = Path(run_dir)
    metrics_path, log_path = run_dir / 'metrics.json', run_dir / 'log.txt'
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        if metrics.get('history'):                                      # tools/train.py
            history = metrics['history']
            curves = {'loss': ([h['epoch'] for h in history], [h['train_loss'] for h in history]),
                      'accuracy': {'train OA': ([h['epoch'] for h in history], [h['train_oa'] for h in history])},
                      'x_label': 'epoch', 'source': str(metrics_path)}
            tested = [h for h in history if 'val_oa' in h]
            if tested:
                curves['accuracy']['test OA'] = ([h['epoch'] for h in tested], [h['val_oa'] for h in tested])
            return curves
        if metrics.get('loss_history'):                                 # tools/distill.py
            losses = metrics['loss_history']
            evaluations = metrics.get('evaluations_during_distillation') or []
            headline = metrics.get('headline', 'oa')   # the task's figure: OA, or instance mIoU
            accuracy = {}
            if evaluations:
                name = 'OA' if headline == 'oa' else headline
                accuracy[f'quick evaluation {name} (1 seed)'] = ([e['iteration'] for e in evaluations],
                                                                 [e[headline] for e in evaluations])
            final_x = len(losses)
            for name, row in (metrics.get('evaluation') or {}).items():
                accuracy[f'{name}, final'] = ([final_x], [row[f'final_{headline}']['mean']])
            return {'loss': (list(range(1, len(losses) + 1)), losses), 'accuracy': accuracy,
                    'x_label': 'distillation iteration', 'source': str(metrics_path)}
    if log_path.is_file():
        text = log_path.read_text()
        steps = [(int(m.group(1)), float(m.group(2))) for m in _STEP.finditer(text)]
        evaluations = [(int(m.group(1)), float(m.group(2))) for m in _EVAL.finditer(text)]
        if steps or evaluations:
            accuracy = {'quick evaluation OA (1 seed)': tuple(map(list, zip(*evaluations)))} if evaluations else {}
            return {'loss': tuple(map(list, zip(*steps))) if steps else ([], []), 'accuracy': accuracy,
                    'x_label': 'distillation iteration', 'source': str(log_path)}
    if not metrics_path.is_file() and not log_path.is_file():
        raise FileNotFoundError(f'{run_dir} holds neither metrics.json nor log.txt; give the run dir of '
                                f'tools/distill.py or tools/train.py')
    raise ValueError(f'no loss or accuracy curve found in {run_dir} (metrics.json without loss_history/history, '
                     f'log.txt without "step i/n | loss" lines)')


def plot_curves(run_dir: str | os.PathLike, out_png: str | os.PathLike, *, panel_inches: float = 4.0,
                dpi: int = 80) -> dict:
    """Loss (left) and accuracy (right) of a run, side by side. Returns {'path', 'width', 'height', 'source'}."""
    curves = read_run_curves(run_dir)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(2 * panel_inches, panel_inches), dpi=dpi)
    xs, ys = curves['loss']
    loss_ax.plot(xs, ys, lw=1)
    loss_ax.set(title='loss', xlabel=curves['x_label'])
    if ys and min(ys) > 0 and max(ys) / min(ys) > 100:
        loss_ax.set_yscale('log')
    for name, (x, y) in curves['accuracy'].items():
        acc_ax.plot(x, y, marker='o', ms=3, lw=1, label=name)
    acc_ax.set(title='accuracy (%)', xlabel=curves['x_label'])
    if curves['accuracy']:
        acc_ax.legend(fontsize=7)
    else:
        acc_ax.text(0.5, 0.5, 'no evaluation in this run', ha='center', va='center', transform=acc_ax.transAxes)
    fig.tight_layout()   # changes the layout inside the figure, not its pixel size
    path = _save(fig, out_png, dpi)
    return {'path': str(path), 'width': round(2 * panel_inches * dpi), 'height': round(panel_inches * dpi),
            'source': curves['source']}


def _scatter(fig, rows: int, cols: int, index: int, cloud: torch.Tensor, title: str, point_size: float,
             color: str = 'tab:blue') -> None:
    ax = fig.add_subplot(rows, cols, index, projection='3d')
    xyz = cloud.detach().cpu().numpy()
    ax.scatter(xyz[:, 0], xyz[:, 2], xyz[:, 1], s=point_size, c=color, depthshade=False, linewidths=0)
    limit = float(np.abs(xyz).max()) if xyz.size else 1.0
    limit = limit if math.isfinite(limit) and limit > 0 else 1.0
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), zlim=(-limit, limit))
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()
    ax.view_init(elev=20, azim=-60)
    ax.set_title(title, fontsize=7, pad=0)


def _save(fig, out_png: str | os.PathLike, dpi: int) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return out_png


__all__ = ['render_clouds', 'plot_curves', 'read_run_curves', 'select_classes']
