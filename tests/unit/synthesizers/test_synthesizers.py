import pytest
import torch

from openpoints_dd.registry import SYNTHESIZERS, build_synthesizer
from openpoints_dd.synthesizers import ExplicitPoints, PointGenerator, chamfer_distance


@pytest.mark.parametrize('name', sorted(SYNTHESIZERS.module_dict))
@pytest.mark.parametrize('num_points', [16, 100, 256])
def test_shapes_labels_and_gradient(name, num_points):
    # the part generator needs its categories' part proportions (the segmentation engine measures them)
    extra = {'part_proportions': [[0.5, 0.5], [0.2, 0.3, 0.5], [1.0]]} if name == 'PartPointGenerator' else {}
    synth = build_synthesizer({'NAME': name, **extra}, num_classes=3, cpc=2)
    slots = synth.slots_of_class(1)
    pos = synth.synthesize(slots, num_points)
    assert pos.shape == (2 * synth.clouds_per_slot, synth.resolution or num_points, 3)
    assert synth.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert synth.cloud_labels.tolist() == [c for c in range(3) for _ in range(2 * synth.clouds_per_slot)]
    pos.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in synth.parameters()), name
    assert 'cpc=2' in repr(synth)


def test_generator_range_and_fresh_noise():
    gen = PointGenerator(num_classes=2, cpc=1, hidden_dim=32)
    slots = torch.arange(2)
    a = gen.synthesize(slots, 2048)
    b = gen.synthesize(slots, 2048)
    assert a.abs().max() < 1 and torch.isfinite(a).all()           # tanh output, open cube
    assert not torch.equal(a, b)                                     # noise is resampled every call
    seeded = [gen.synthesize(slots, 64, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*seeded)
    assert 'w0_initial=100.0' in repr(gen)


def test_generator_init_layout_follows_siren():
    gen = PointGenerator(num_classes=40, cpc=1)
    assert gen.embedding.weight.shape == (40, 256)
    assert gen.siren[0].linear.weight.abs().max() <= 1.0                               # U(±1/fan_in), fan_in 1
    assert gen.siren[1].linear.weight.abs().max() <= (6 / 256) ** 0.5                  # U(±sqrt(6/256)/1)
    assert gen.output.bias is None
    assert sum(p.numel() for p in gen.parameters()) == 143_104                        # spec §1.5, K=40, cpc 1


def test_real_init_fits_target_clouds():
    torch.manual_seed(0)
    t = torch.linspace(0, 1, 128)
    line = torch.stack([t, 0.2 * torch.sin(6 * t), 0 * t], -1)
    ring = torch.stack([torch.cos(6.28 * t), torch.sin(6.28 * t), 0.1 * t], -1)
    targets = torch.stack([line, ring])
    gen = PointGenerator(num_classes=2, cpc=1, hidden_dim=64, w0_initial=30, init='real', init_steps=150,
                         init_lr=3e-3, init_num_points=128)
    report = gen.initialize_from_real(targets)
    assert report['chamfer_end'] < 0.5 * report['chamfer_start']


def test_explicit_points_init_and_subsample():
    synth = ExplicitPoints(num_classes=2, cpc=1, num_points=32, init='real')
    clouds = torch.rand(2, 40, 3)
    synth.initialize_from_real(clouds)
    assert torch.equal(synth.points.data, clouds[:, :32])
    assert synth.synthesize(torch.arange(2), 16).shape == (2, 16, 3)
    with pytest.raises(ValueError, match='stores 32 points'):
        synth.synthesize(torch.arange(2), 64)


def test_explicit_points_projection_puts_only_the_points_outside_back_on_the_sphere():
    synth = ExplicitPoints(num_classes=1, cpc=1, num_points=3, max_radius=1.0)
    with torch.no_grad():
        synth.points.copy_(torch.tensor([[[0.0, 0.0, 0.0], [0.3, -0.4, 0.0], [0.0, 3.0, 4.0]]]))
    synth.project_()
    expected = torch.tensor([[[0.0, 0.0, 0.0], [0.3, -0.4, 0.0], [0.0, 0.6, 0.8]]])
    assert torch.allclose(synth.points.data, expected)
    unbounded = ExplicitPoints(num_classes=1, cpc=1, num_points=3)
    with torch.no_grad():
        unbounded.points.mul_(10)
    before = unbounded.points.detach().clone()
    unbounded.project_()
    assert torch.equal(unbounded.points.data, before)
    for bad in (0, -1.0, True):
        with pytest.raises(ValueError, match='max_radius must be a positive number'):
            ExplicitPoints(num_classes=1, cpc=1, max_radius=bad)


def test_chamfer_distance_known_values():
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    assert chamfer_distance(a, a).item() == 0
    b = a + torch.tensor([0, 1.0, 0])
    assert chamfer_distance(a, b).item() == pytest.approx(2.0)


def test_unknown_synthesizer_and_bad_key():
    with pytest.raises(KeyError, match='Registered synthesizers'):
        build_synthesizer({'NAME': 'NoSuchSynthesizer'}, num_classes=2, cpc=1)
    with pytest.raises(TypeError, match='PointGenerator'):
        build_synthesizer({'NAME': 'PointGenerator', 'hiden_dim': 3}, num_classes=2, cpc=1)
    with pytest.raises(ValueError, match="init must be"):
        build_synthesizer({'NAME': 'PointGenerator', 'init': 'magic'}, num_classes=2, cpc=1)


def test_a_real_fit_without_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="init 'real' needs init_steps >= 1"):
        build_synthesizer({'NAME': 'PointGenerator', 'init': 'real', 'init_steps': 0}, num_classes=3, cpc=1)
