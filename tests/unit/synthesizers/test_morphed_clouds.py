"""MorphedClouds: anchors and convex morphs, point correspondence by assignment, both accountings."""
import pytest
import torch

from openpoints_dd.registry import build_synthesizer
from openpoints_dd.synthesizers import MorphedClouds, align_points


def _morphs(**options) -> MorphedClouds:
    torch.manual_seed(0)
    return build_synthesizer({'NAME': 'MorphedClouds', 'anchors': 3, 'morphs': 2, 'points': 20, 'init': 'noise',
                              **options}, num_classes=4, cpc=2)


def test_a_slot_trains_as_its_anchors_then_its_morphs_with_its_class():
    synthesizer = _morphs()
    clouds = synthesizer.synthesize(torch.tensor([0, 5]), num_points=999)
    assert clouds.shape == (2 * 5, 20, 3)
    torch.testing.assert_close(clouds[:3], synthesizer.anchor_points[0])
    torch.testing.assert_close(clouds[5:8], synthesizer.anchor_points[5])
    assert synthesizer.cloud_labels.tolist() == [c for c in range(4) for _ in range(2 * 5)]
    assert synthesizer.cloud_slots(torch.tensor([0, 5])).tolist() == [0] * 5 + [5] * 5


def test_a_morph_of_identical_anchors_is_that_anchor_and_blends_are_convex():
    synthesizer = _morphs()
    with torch.no_grad():
        synthesizer.anchor_points[1] = synthesizer.anchor_points[1, :1].expand(3, -1, -1)
    clouds = synthesizer.synthesize(torch.tensor([1]), 20)
    for morph in clouds[3:]:
        torch.testing.assert_close(morph, synthesizer.anchor_points[1, 0])
    weights = synthesizer.blend_weights(torch.arange(8))
    assert (weights >= 0).all() and torch.allclose(weights.sum(-1), torch.ones(8, 2))
    # every morph point lies in the box of its anchors' corresponding points (a convex combination)
    clouds = synthesizer.synthesize(torch.tensor([2]), 20)
    low, high = clouds[:3].amin(0), clouds[:3].amax(0)
    assert ((clouds[3:] >= low - 1e-6) & (clouds[3:] <= high + 1e-6)).all()


def test_alignment_is_a_permutation_that_never_increases_the_correspondence_distance():
    torch.manual_seed(0)
    reference = torch.randn(30, 3)
    clouds = torch.stack([reference[torch.randperm(30)], torch.randn(30, 3)])
    aligned = align_points(reference, clouds)
    for cloud, result in zip(clouds, aligned):
        assert torch.equal(torch.sort(result.flatten()).values, torch.sort(cloud.flatten()).values)
        assert (result - reference).norm(dim=-1).sum() <= (cloud - reference).norm(dim=-1).sum() + 1e-6
    torch.testing.assert_close(aligned[0], reference)      # a shuffled copy is put back in order


def test_real_start_fits_anchors_with_correspondence():
    synthesizer = _morphs(init='random')
    torch.manual_seed(1)
    clouds = torch.randn(8 * 3, 64, 3)
    report = synthesizer.initialize_from_real(clouds)
    assert report['correspondence_distance_after'] <= report['correspondence_distance_before']
    first = synthesizer.anchor_points[0, 0]
    assert ((first.unsqueeze(1) == clouds[0].unsqueeze(0)).all(-1).sum(1) == 1).all()   # points of the real cloud
    with pytest.raises(ValueError, match=r'need \(24, >=20, 3\) real clouds'):
        synthesizer.initialize_from_real(torch.randn(8, 64, 3))


def test_both_accountings_and_the_blend_learning_rate_group():
    synthesizer = _morphs(blend_lr_scale=0.5)
    assert synthesizer.accounting(1024) == {'floats_per_class': 2 * (3 * 20 * 3 + 2 * 3),
                                            'training_clouds_per_class': 2 * 5, 'points_per_training_cloud': 20}
    groups = synthesizer.param_groups()
    assert groups[1]['params'][0] is synthesizer.blend_logits and groups[1]['lr_scale'] == 0.5


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match='init must be one of'):
        _morphs(init='fps')
    with pytest.raises(ValueError, match='anchors >= 1'):
        _morphs(anchors=0)
    with pytest.raises(ValueError, match='max_radius must be a positive number'):
        _morphs(max_radius='1')


def test_a_max_radius_projects_the_anchors_and_so_the_morphs():
    synthesizer = _morphs(max_radius=0.5)
    with torch.no_grad():
        synthesizer.anchor_points.mul_(3)
    inside = synthesizer.anchor_points.detach().norm(dim=-1) <= 0.5
    kept = synthesizer.anchor_points.detach()[inside]
    synthesizer.project_()
    radius = synthesizer.anchor_points.detach().norm(dim=-1)
    assert radius.max() <= 0.5 + 1e-6 and not inside.all()
    torch.testing.assert_close(radius[~inside], torch.full_like(radius[~inside], 0.5))
    assert torch.equal(synthesizer.anchor_points.detach()[inside], kept)
    assert synthesizer.synthesize(torch.arange(8), 20).norm(dim=-1).max() <= 0.5 + 1e-6
