"""Hard and teacher labels: the loss terms, the teacher's cache, and training with either."""
from __future__ import annotations

import pytest
import torch

import openpoints_dd  # noqa: F401
from conftest import make_fake_modelnet40
from openpoints_dd.data.artifact import ArtifactError, read_tensor_file, save_artifact, save_tensor_file
from openpoints_dd.data.real_pool import RealPool
from openpoints_dd.engine.evaluate import evaluation_settings, fixed_sampler, train_and_test
from openpoints_dd.engine.tasks import TASKS
from openpoints_dd.labels import (DatasetIdentity, HardLabels, TeacherLabels, distillation_kl, load_teacher,
                                  smoothed_cross_entropy, teacher_path)
from openpoints_dd.models import DistillPointNet
from openpoints_dd.registry import build_labeler
from openpoints_dd.utils.config import REPO_ROOT
from openpoints.dataset import ModelNet40Ply2048

TEACHER_YAML = str(REPO_ROOT / 'cfgs' / 'train' / 'modelnet40-pointnet.yaml')
THREE = DatasetIdentity('Tiny', ('a', 'b', 'c'))


def _tiny_pool(tiny_clouds) -> RealPool:
    """The tiny clouds as the test pool of the Tiny dataset (THREE)."""
    return RealPool(tiny_clouds.pos, tiny_clouds.y, list(THREE.class_names), THREE.name)


def test_smoothed_cross_entropy_targets_one_minus_eps_and_eps_over_k_minus_one():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    log_probs = torch.log_softmax(logits, dim=-1)[0]
    expected = -(0.8 * log_probs[0] + 0.1 * log_probs[1] + 0.1 * log_probs[2])
    assert smoothed_cross_entropy(logits, torch.tensor([0]), 0.2).item() == pytest.approx(expected.item())
    assert smoothed_cross_entropy(logits, torch.tensor([0]), 0.0).item() == pytest.approx(-log_probs[0].item())


def test_the_teacher_term_is_zero_when_the_student_equals_the_teacher_and_positive_otherwise():
    logits = torch.randn(8, 5)
    assert distillation_kl(logits, logits.clone(), 5.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_kl(logits, torch.randn(8, 5), 5.0).item() > 0


def test_teacher_labels_with_the_teacher_as_student_leave_only_the_hard_term(tmp_path):
    teacher = _cached_teacher(tmp_path)
    points = torch.randn(4, 64, 3)
    with pytest.raises(RuntimeError, match='before prepare'):
        teacher.teacher_logits(points)
    teacher.prepare(THREE, 'cpu')
    logits = teacher.teacher_logits(points)
    torch.testing.assert_close(logits, teacher._model(points))
    target = torch.tensor([0, 1, 2, 0])
    expected = (1 - teacher.alpha) * smoothed_cross_entropy(logits, target, teacher.smoothing)
    torch.testing.assert_close(teacher.loss(logits, target, points), expected)


def test_alpha_zero_trains_exactly_as_hard_labels(tmp_path, tiny_clouds):
    """The same smoothing, α = 0: the same training, weight for weight (querying the teacher changes nothing)."""
    teacher = _cached_teacher(tmp_path, alpha=0.0, smoothing=0.2)
    teacher.prepare(THREE, 'cpu')
    settings = evaluation_settings({'model': {'NAME': 'DistillPointNet', 'widths': [8, 16, 32]}, 'epochs': 3,
                                    'batch_size': 4})
    sampler, test = fixed_sampler(tiny_clouds.pos, tiny_clouds.y), _tiny_pool(tiny_clouds)
    results = [train_and_test(TASKS['classification'], sampler, test, settings=settings, seed=0, labeler=labeler)
               for labeler in (HardLabels(smoothing=0.2), teacher)]
    assert results[0]['oa'] == results[1]['oa'] and results[0]['macc'] == results[1]['macc']
    distinct = train_and_test(TASKS['classification'], sampler, test, settings=settings, seed=0,
                              labeler=_prepared(tmp_path, alpha=0.8))
    assert distinct['seconds'] > 0


def test_the_cache_rejects_foreign_corrupt_and_other_class_count_teachers(tmp_path):
    teacher = _cached_teacher(tmp_path)
    path, _ = teacher_path(teacher.teacher, teacher.overrides, teacher.cache_dir)
    load_teacher(path, THREE)                                                      # the good one loads
    with pytest.raises(ArtifactError, match=r'trained on Tiny \(3 classes\) but the set to label comes from Other '
                                             r'\(5 classes\)'):
        load_teacher(path, DatasetIdentity('Other', tuple('abcde')))
    with pytest.raises(ArtifactError, match='other class names'):
        load_teacher(path, DatasetIdentity('Tiny', ('x', 'y', 'z')))
    foreign = save_artifact(tmp_path / 'artifact.safetensors', {'pos': torch.zeros(3, 4, 3), 'y': torch.arange(3)},
                            {'kind': 'points', 'synthesizer': {'NAME': 'ExplicitPoints'}, 'objective': {'NAME': 'x'},
                             'rotator': {'NAME': 'IdentityRotator'}, 'cpc': 1, 'num_points': 4,
                             'dataset': {'name': 'Tiny', 'num_classes': 3, 'class_names': ['a', 'b', 'c']}})
    with pytest.raises(ArtifactError, match="is not a teacher \\(kind 'points'\\)"):
        load_teacher(foreign, THREE)
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match='not a readable safetensors file'):
        load_teacher(corrupt, THREE)
    with pytest.raises(ArtifactError, match='no teacher at'):
        load_teacher(tmp_path / 'missing.safetensors', THREE)


def test_prepare_trains_a_missing_teacher_once_and_records_it(tmp_path):
    data = make_fake_modelnet40(tmp_path / 'ModelNet40Ply2048')
    overrides = [f'dataset.common.data_dir={data}', 'num_points=128', 'epochs=1', 'batch_size=4',
                 'val_batch_size=4', 'progress=False']
    labeler = TeacherLabels(teacher=TEACHER_YAML, overrides=overrides, cache_dir=str(tmp_path / 'teachers'))
    path, _ = teacher_path(TEACHER_YAML, overrides, str(tmp_path / 'teachers'))
    identity = DatasetIdentity('ModelNet40Ply2048', tuple(ModelNet40Ply2048.classes))
    labeler.prepare(identity, 'cpu')
    assert path.is_file() and labeler.report()['teacher']['model'] == 'DistillPointNet'
    assert 0 <= labeler.report()['teacher']['test_oa'] <= 100 and labeler.report()['teacher']['minutes'] >= 0
    stamp = path.stat().st_mtime_ns
    TeacherLabels(teacher=TEACHER_YAML, overrides=overrides, cache_dir=str(tmp_path / 'teachers')).prepare(identity, 'cpu')
    assert path.stat().st_mtime_ns == stamp                                         # loaded, not retrained


def test_bad_labels_sections_are_clear_errors():
    with pytest.raises(KeyError, match='Registered labelers: HardLabels, TeacherLabels'):
        build_labeler({'NAME': 'SoftLabels'})
    with pytest.raises(ValueError, match='alpha must be in'):
        TeacherLabels(teacher=TEACHER_YAML, alpha=1.5)
    with pytest.raises(ValueError, match='smoothing must be in'):
        HardLabels(smoothing=1.0)
    with pytest.raises(ValueError, match=r"TeacherLabels takes no such key \(did you mean 'temperature'\?\)"):
        evaluation_settings({'labels': {'NAME': 'TeacherLabels', 'teacher': TEACHER_YAML, 'temprature': 3}})


def test_a_teacher_trained_on_a_distilled_set_is_refused():
    with pytest.raises(ValueError, match='a teacher is trained on the whole real train set'):
        teacher_path(str(REPO_ROOT / 'cfgs' / 'train' / 'distilled-pointnet-cpu.yaml'), [], 'runs/teachers')


def _cached_teacher(tmp_path, **options) -> TeacherLabels:
    """A TeacherLabels whose cache already holds a tiny 3-class DistillPointNet teacher (no training)."""
    labeler = TeacherLabels(teacher=TEACHER_YAML, cache_dir=str(tmp_path / 'teachers'), **options)
    path, _ = teacher_path(labeler.teacher, labeler.overrides, labeler.cache_dir)
    if not path.exists():
        model_cfg = {'NAME': 'DistillPointNet', 'num_classes': 3, 'widths': [8, 16, 32]}
        torch.manual_seed(1)
        model = DistillPointNet(num_classes=3, widths=(8, 16, 32))
        save_tensor_file(path, model.state_dict(), {
            'kind': 'teacher', 'model': model_cfg, 'cfg_hash': 'test', 'test_oa': 50.0, 'test_macc': 50.0,
            'epochs': 1, 'minutes': 0.0, 'dataset': {'name': 'Tiny', 'num_classes': 3, 'class_names': ['a', 'b', 'c']}})
    return labeler


def _prepared(tmp_path, **options) -> TeacherLabels:
    labeler = _cached_teacher(tmp_path, **options)
    labeler.prepare(THREE, 'cpu')
    return labeler


# ------------------------------------------------------------------------------- part segmentation (per point)
def test_per_point_terms_are_the_per_cloud_terms_over_every_point():
    """(B, K, N) logits: each term equals its (B·N, K) per-row form, so every point counts as one labelled row."""
    torch.manual_seed(0)
    student, teacher, target = torch.randn(2, 5, 7), torch.randn(2, 5, 7), torch.randint(0, 5, (2, 7))
    rows = lambda t: t.permute(0, 2, 1).reshape(-1, 5)   # noqa: E731
    torch.testing.assert_close(distillation_kl(student, teacher, 3.0), distillation_kl(rows(student), rows(teacher), 3.0))
    torch.testing.assert_close(smoothed_cross_entropy(student, target, 0.2),
                               smoothed_cross_entropy(rows(student), target.reshape(-1), 0.2))
    torch.testing.assert_close(smoothed_cross_entropy(student, target), torch.nn.functional.cross_entropy(student, target))
    assert distillation_kl(student, student.clone(), 5.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match='trained for another head'):
        distillation_kl(student, torch.randn(2, 4, 7), 5.0)


def test_a_part_teacher_labels_only_sets_of_its_parts(tmp_path):
    path = _part_teacher_file(tmp_path)
    load_teacher(path, PARTS)                                                       # the good one loads
    with pytest.raises(ArtifactError, match='a segmentation teacher cannot label a classification set'):
        load_teacher(path, DatasetIdentity('Parts', PARTS.class_names))
    with pytest.raises(ArtifactError, match='other parts per category'):
        load_teacher(path, DatasetIdentity('Parts', PARTS.class_names, ((0, 1), (2,), (3, 4))))
    classifier = _cached_teacher(tmp_path)
    with pytest.raises(ArtifactError, match='a classification teacher cannot label a segmentation set'):
        load_teacher(teacher_path(classifier.teacher, [], classifier.cache_dir)[0],
                     DatasetIdentity('Tiny', THREE.class_names, ((0,), (1,), (2,))))


def test_part_alpha_zero_trains_exactly_as_hard_part_labels_and_the_teacher_changes_training(tmp_path):
    from openpoints_dd.engine.evaluate import evaluation_settings
    from openpoints_dd.engine.evaluate_seg import fixed_part_sampler
    from openpoints_dd.data.part_pool import PartPool
    torch.manual_seed(0)
    labels = torch.arange(3).repeat(4)
    parts = torch.stack([torch.tensor(PARTS.cls2parts[c])[torch.randint(0, len(PARTS.cls2parts[c]), (32,))]
                         for c in labels.tolist()])
    pool = PartPool(torch.randn(12, 32, 3), parts, labels, list(PARTS.class_names),
                    [list(p) for p in PARTS.cls2parts], 'Parts')
    settings = evaluation_settings({'model': {'NAME': 'DistillPointNetSeg', 'widths': [8, 16, 32]}, 'epochs': 3,
                                   'batch_size': 4}, 'segmentation')
    sampler = fixed_part_sampler(pool.pos, pool.parts, pool.labels)
    _part_teacher_file(tmp_path)
    runs = {}
    for name, labeler in (('hard', HardLabels(smoothing=0.2)), ('alpha0', _part_labeler(tmp_path, alpha=0.0)),
                          ('teacher', _part_labeler(tmp_path, alpha=0.8))):
        torch.manual_seed(0)
        runs[name] = train_and_test(TASKS['segmentation'], sampler, pool, settings=settings, seed=0, labeler=labeler)
    keys = ('instance_miou', 'class_miou', 'point_acc')
    assert [runs['hard'][k] for k in keys] == [runs['alpha0'][k] for k in keys]
    assert [runs['hard'][k] for k in keys] != [runs['teacher'][k] for k in keys]


def test_tensor_files_hold_zero_dim_tensors(tmp_path):
    """A BatchNorm network's state (num_batches_tracked is 0-dim) is written and verified like any other."""
    state = torch.nn.BatchNorm1d(4).state_dict()
    path = save_tensor_file(tmp_path / 'bn.safetensors', state, {'kind': 'teacher'})
    tensors, _ = read_tensor_file(path, 'teacher', 'retrain it')
    assert tensors['num_batches_tracked'].shape == () and torch.equal(tensors['running_var'], state['running_var'])


PARTS = DatasetIdentity('Parts', ('a', 'b', 'c'), ((0, 1), (2, 3), (4,)))
PART_YAML = str(REPO_ROOT / 'cfgs' / 'train' / 'partseg' / 'teacher-embedded-pointnet.yaml')


def _part_teacher_file(tmp_path):
    """A cached tiny part-segmentation teacher of `PARTS` (5 part labels, 3 categories), written untrained."""
    path, _ = teacher_path(PART_YAML, [], str(tmp_path / 'teachers'))
    if not path.exists():
        from openpoints_dd.models import DistillPointNetSeg
        torch.manual_seed(2)
        model_cfg = {'NAME': 'DistillPointNetSeg', 'num_classes': 5, 'num_shape_classes': 3, 'widths': [8, 16, 32]}
        model = DistillPointNetSeg(num_classes=5, num_shape_classes=3, widths=(8, 16, 32))
        save_tensor_file(path, model.state_dict(), {
            'kind': 'teacher', 'task': 'segmentation', 'model': model_cfg, 'cfg_hash': 'test',
            'test_instance_miou': 40.0, 'test_class_miou': 40.0, 'epochs': 1, 'minutes': 0.0,
            'dataset': {'name': 'Parts', 'num_classes': 3, 'class_names': list(PARTS.class_names),
                        'cls2parts': [list(p) for p in PARTS.cls2parts]}})
    return path


def _part_labeler(tmp_path, **options) -> TeacherLabels:
    labeler = TeacherLabels(teacher=PART_YAML, cache_dir=str(tmp_path / 'teachers'), **options)
    labeler.prepare(PARTS, 'cpu')
    return labeler


def test_the_teacher_term_over_each_shapes_own_parts():
    """With `allowed`, the KL compares the two distributions renormalised over the allowed classes only: zero when
    they agree there whatever the other logits, the closed form otherwise, and a finite gradient."""
    torch.manual_seed(3)
    student, teacher = torch.randn(2, 5, 7, requires_grad=True), torch.randn(2, 5, 7)
    allowed = torch.tensor([[True, True, False, False, False], [False, False, True, True, True]]).unsqueeze(-1)
    same_on_allowed = teacher.where(allowed, teacher + 10 * torch.randn(2, 5, 7))
    assert distillation_kl(same_on_allowed, teacher, 2.0, allowed).item() == pytest.approx(0.0, abs=1e-6)
    loss = distillation_kl(student, teacher, 2.0, allowed)
    expected = 0.0
    for b, parts in enumerate(([0, 1], [2, 3, 4])):
        p = torch.softmax(teacher[b, parts] / 2.0, dim=0)
        q = torch.log_softmax(student[b, parts].detach() / 2.0, dim=0)
        expected += (p * (p.log() - q)).sum(0).sum()
    assert loss.item() == pytest.approx((expected / 14 * 4).item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad[0, 2:].abs().max() == 0


def test_the_default_temperature_is_the_tasks(tmp_path):
    """No temperature given: 5 for classification (3D-Pruner), 1 for per-point part labels; a given one stays."""
    assert _prepared(tmp_path).temperature == 5.0
    _part_teacher_file(tmp_path)
    assert _part_labeler(tmp_path).temperature == 1.0 and _part_labeler(tmp_path).report()['own_parts'] is True
    assert _part_labeler(tmp_path, temperature=3).temperature == 3.0
