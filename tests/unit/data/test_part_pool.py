"""PartPool: openpoints' ShapeNetPartNormal layout read from a tiny directory, and the embedded part set."""
import json

import numpy as np
import pytest
import torch

from openpoints_dd.data.part_pool import PartPool

# (category, synset, shape id, split, number of points, parts in order)
SHAPES = [('Airplane', '02691156', 'a1', 'train', 10, [0] * 5 + [1] * 3 + [3] * 2),
          ('Airplane', '02691156', 'a2', 'train', 12, [0] * 6 + [2] * 6),
          ('Airplane', '02691156', 'a3', 'test', 8, [1] * 8),
          ('Bag', '02773838', 'b1', 'train', 10, [4] * 2 + [5] * 8),
          ('Bag', '02773838', 'b2', 'val', 10, [5] * 10),
          ('Bag', '02773838', 'b3', 'test', 10, [4] * 10)]


def make_fake_shapenetpart(root):
    """The standard shapenetcore_partanno_segmentation_benchmark_v0_normal layout, 2 categories."""
    root.mkdir(parents=True)
    (root / 'synsetoffset2category.txt').write_text('Airplane\t02691156\nBag\t02773838\n')
    (root / 'train_test_split').mkdir()
    rng = np.random.default_rng(0)
    for split in ('train', 'val', 'test'):
        names = [f'shape_data/{syn}/{sid}' for _, syn, sid, s, _, _ in SHAPES if s == split]
        (root / 'train_test_split' / f'shuffled_{split}_file_list.json').write_text(json.dumps(names))
    for _, syn, sid, _, n, parts in SHAPES:
        (root / syn).mkdir(exist_ok=True)
        rows = np.concatenate([rng.normal(size=(n, 6)), np.asarray(parts, dtype=float)[:, None]], 1)
        np.savetxt(root / syn / f'{sid}.txt', rows, fmt='%.6f')
    return root


def test_shapenetpart_loader_reads_the_standard_layout(tmp_path):
    root = make_fake_shapenetpart(tmp_path / 'shapenetcore_partanno_segmentation_benchmark_v0_normal')
    cfg = {'common': {'NAME': 'ShapeNetPartNormal', 'data_root': str(root), 'presample': True},
           'train': {'split': 'train'}, 'test': {'split': 'test'}}
    pool = PartPool.from_dataset_cfg(cfg, 'train', num_points=16)
    assert pool.pos.shape == (3, 16, 3) and pool.parts.shape == (3, 16)
    assert pool.labels.tolist() == [0, 0, 1] and pool.counts.tolist() == [2, 1]
    assert pool.class_names == ['Airplane', 'Bag'] and pool.cls2parts == [[0, 1, 2, 3], [4, 5]]
    assert set(pool.parts[:2].unique().tolist()) <= {0, 1, 2, 3} and set(pool.parts[2].unique().tolist()) <= {4, 5}
    proportions = pool.part_proportions()
    assert [len(q) for q in proportions] == [4, 2] and all(sum(q) == pytest.approx(1.0) for q in proportions)
    assert proportions[1][0] == pytest.approx((pool.parts[2] == 4).float().mean().item())
    test = PartPool.from_dataset_cfg(cfg, 'test', num_points=8)
    assert test.labels.tolist() == [0, 1] and test.parts[0].tolist() == [1] * 8 and test.parts[1].tolist() == [4] * 8
    assert not (root / 'processed').exists()          # presample (CUDA + pickle) was switched off
    pos, parts = pool.sample(0, 5, 8, torch.Generator().manual_seed(0))
    assert pos.shape == (2, 8, 3) and parts.shape == (2, 8)
    assert torch.allclose(pos.norm(dim=-1).amax(1), torch.ones(2), atol=1e-3)   # normalisation eps 1e-4


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='data_root'):
        PartPool.from_dataset_cfg({'common': {'NAME': 'ShapeNetPartNormal', 'data_root': str(tmp_path / 'no')}})


def test_embedded_part_pool_and_proportions():
    cfg = {'common': {'NAME': 'EmbeddedShapesPart', 'num_shape_classes': 2, 'num_per_class_train': 4}}
    pool = PartPool.from_dataset_cfg(cfg, 'train', num_points=64)
    assert pool.num_classes == 2 and pool.num_parts == sum(len(p) for p in pool.cls2parts)
    for c, q in enumerate(pool.part_proportions()):
        counts = torch.stack([(pool.parts[pool.labels == c] == p).sum() for p in pool.cls2parts[c]]).double()
        assert q == pytest.approx((counts / counts.sum()).tolist())
    with pytest.raises(ValueError, match='outside its parts'):
        PartPool(pool.pos, torch.zeros_like(pool.parts), pool.labels.flip(0), pool.class_names, [[1], [0]], 'x')


def test_complete_per_class_picks_clouds_with_every_part():
    """Category 0 (parts 0, 1): only cloud 2 shows both; category 1 (part 2): any of its clouds. With too few
    complete clouds, the next most complete come after them."""
    parts = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    pool = PartPool(torch.randn(5, 4, 3), parts, labels, ['a', 'b'], [[0, 1], [2]], 'hand')
    for seed in range(5):
        _, index = pool.complete_per_class(1, torch.Generator().manual_seed(seed))
        assert index[0].item() == 2 and index[1].item() in (3, 4)
    _, index = pool.complete_per_class(2, torch.Generator().manual_seed(0))
    assert index[0].item() == 2 and index[1].item() in (0, 1)
    with pytest.raises(ValueError, match='fewer than 3'):
        pool.complete_per_class(3)


def test_per_slot_proportions_reproduce_part_presence():
    """Category 0 (parts 0, 1): part 1 shown by 1 cloud of 4 (rate 1/4); category 1 (part 2) always. At cpc 1
    the slot leaves part 1 out and takes the proportions of the clouds without it (all part 0); at cpc 4 one
    slot of four shows it, with the proportions of the cloud that does (3:1)."""
    parts = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1],
                          [2, 2, 2, 2], [2, 2, 2, 2], [2, 2, 2, 2], [2, 2, 2, 2]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    pool = PartPool(torch.randn(8, 4, 3), parts, labels, ['a', 'b'], [[0, 1], [2]], 'hand')
    assert pool.part_proportions() == [[15 / 16, 1 / 16], [1.0]]
    assert pool.part_proportions(1) == [[1.0, 0.0], [1.0]]
    assert pool.part_proportions(4) == [[0.75, 0.25]] + [[1.0, 0.0]] * 3 + [[1.0]] * 4
    # selection follows the slots: at cpc 1 never the cloud with part 1; at cpc 4 it goes to the slot showing it
    for seed in range(4):
        _, index = pool.select_by_parts(pool.part_proportions(1), 1, torch.Generator().manual_seed(seed))
        assert index[0].item() in (0, 1, 2) and index[1].item() in (4, 5, 6, 7)
    _, index = pool.select_by_parts(pool.part_proportions(4), 4, torch.Generator().manual_seed(0))
    assert index[0].item() == 3 and sorted(index[1:4].tolist()) == [0, 1, 2] and sorted(index[4:].tolist()) == [4, 5, 6, 7]
