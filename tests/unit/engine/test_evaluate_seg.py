"""Part-segmentation metrics on hand-made examples, computed by hand."""
import pytest
import torch

from openpoints_dd.engine.evaluate import evaluation_settings
from openpoints_dd.engine.evaluate_seg import part_miou, predict_parts

CLS2PARTS = [[0, 1], [2, 3, 4]]


def test_instance_and_class_miou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0], [2, 3, 3, 3]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0], [2, 3, 4, 4]])
    categories = torch.tensor([0, 0, 1])
    result = part_miou(pred, target, categories, CLS2PARTS)
    # shape 0: part 0 1/2, part 1 2/3 -> 7/12; shape 1: part 0 1, part 1 absent from both -> 1 -> 1
    # shape 2: part 2 1, part 3 1/3, part 4 0/2 -> 4/9
    shapes = [7 / 12, 1.0, 4 / 9]
    assert result['instance_miou'] == pytest.approx(100 * sum(shapes) / 3)
    assert result['class_miou'] == pytest.approx(100 * ((7 / 12 + 1) / 2 + 4 / 9) / 2)
    assert result['per_class'][1] == pytest.approx(100 * 4 / 9)


def test_restricted_and_unrestricted_predictions():
    # one category-0 shape of 2 points; the largest logit of point 0 is part 3 (another category's)
    logits = torch.tensor([[[1.0, 0.0], [0.5, 2.0], [0.0, 0.0], [3.0, 0.0], [0.0, 0.0]]])   # (1, 5 parts, 2 points)
    categories, target = torch.tensor([0]), torch.tensor([[0, 1]])
    restricted = predict_parts(logits, categories, CLS2PARTS, restricted=True)
    unrestricted = predict_parts(logits, categories, CLS2PARTS, restricted=False)
    assert restricted.tolist() == [[0, 1]] and unrestricted.tolist() == [[3, 1]]
    assert part_miou(restricted, target, categories, CLS2PARTS)['instance_miou'] == pytest.approx(100.0)
    # unrestricted: part 0 0/1, part 1 1/1 (the stray part 3 is not a part of the category) -> 50
    result = part_miou(unrestricted, target, categories, CLS2PARTS)
    assert result['instance_miou'] == pytest.approx(50.0) and result['class_miou'] == pytest.approx(50.0)


def test_settings_reject_unknown_keys():
    assert evaluation_settings({'epochs': 3}, 'segmentation')['epochs'] == 3
    with pytest.raises(ValueError, match=r"unknown key evaluation\.epocs \(did you mean 'epochs'\?\)"):
        evaluation_settings({'epocs': 3}, 'segmentation')
    with pytest.raises(ValueError, match=r'unknown key evaluation\.part_balance'):   # segmentation's own key
        evaluation_settings({'part_balance': 0.5})


POINTNEXT_S_PARTSEG = {   # PointNeXt-S part segmentation (openpoints BasePartSeg), narrowed for a CPU test
    'NAME': 'BasePartSeg',
    'encoder_args': {'NAME': 'PointNextEncoder', 'blocks': [1, 1, 1], 'strides': [1, 4, 4], 'width': 8,
                     'in_channels': 3, 'radius': 0.2, 'radius_scaling': 2.5, 'sa_layers': 1, 'sa_use_res': False,
                     'nsample': 8, 'expansion': 4, 'aggr_args': {'feature_type': 'dp_fj', 'reduction': 'max'},
                     'group_args': {'NAME': 'ballquery', 'normalize_dp': True},
                     'conv_args': {'order': 'conv-norm-act'}, 'act_args': {'act': 'relu'}, 'norm_args': {'norm': 'bn'}},
    'decoder_args': {'NAME': 'PointNextPartDecoder', 'num_classes': 16, 'cls_map': 'pointnet2'},
    'cls_args': {'NAME': 'SegHead', 'norm_args': {'norm': 'bn'}}}


@pytest.mark.parametrize('model', [{'NAME': 'DistillPointNetSeg', 'widths': [8, 16, 32]}, POINTNEXT_S_PARTSEG])
def test_a_part_segmentation_run_trains_pointnet_and_pointnext(model):
    from openpoints_dd.data.part_pool import PartPool
    from openpoints_dd.engine.evaluate import train_and_test
    from openpoints_dd.engine.evaluate_seg import fixed_part_sampler
    from openpoints_dd.engine.tasks import TASKS
    generator = torch.Generator().manual_seed(0)
    pos, categories = torch.randn(4, 64, 3, generator=generator), torch.tensor([0, 0, 1, 1])
    parts = torch.stack([torch.where(pos[i, :, 0] > 0, CLS2PARTS[c][0], CLS2PARTS[c][1]) for i, c in
                         enumerate(categories.tolist())])
    test = PartPool(pos, parts, categories, ['a', 'b'], CLS2PARTS, 'hand')
    settings = evaluation_settings({'model': model, 'epochs': 3, 'batch_size': 4, 'num_points': 64,
                                   'test_every': 1}, 'segmentation')
    result = train_and_test(TASKS['segmentation'], fixed_part_sampler(pos, parts, categories), test,
                            settings=settings, seed=0)
    for key in ('instance_miou', 'class_miou', 'unrestricted_instance_miou', 'unrestricted_class_miou'):
        assert 0 <= result[key] <= 100
    # the papers' best tested epoch, as in classification: never below the final epoch's figure
    assert result['best_instance_miou'] >= result['instance_miou'] and 1 <= result['best_epoch'] <= 3
