import torch

from openpoints_dd.utils.fit import fit_batches, fit_epochs


def _setup():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    return weight, optimizer


def test_every_row_is_seen_once_per_epoch_in_slices_of_the_batch_size():
    weight, optimizer = _setup()
    seen, epochs_drawn = [], []
    rows = torch.arange(10)

    def sampler(epoch, generator):
        epochs_drawn.append(epoch)
        return (rows,)

    def batch_loss(batch):
        seen.append(batch.tolist())
        return weight.square().sum()

    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    after = []
    steps = fit_epochs(optimizer, batch_loss, sampler, epochs=2, batch_size=4, generator=torch.Generator().manual_seed(0),
                       scheduler=scheduler, after_epoch=after.append)
    assert steps == 6 and epochs_drawn == [0, 1] and after == [0, 1]
    assert [len(b) for b in seen] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(seen[:3], [])) == list(range(10)) and sorted(sum(seen[3:], [])) == list(range(10))
    assert seen[:3] != seen[3:]                                   # a new shuffle every epoch
    assert optimizer.param_groups[0]['lr'] == 0.1 * 0.5 ** 2      # the scheduler steps once per epoch


def test_max_steps_stops_inside_an_epoch_and_zero_steps_trains_nothing():
    weight, optimizer = _setup()
    calls = []

    def batch_loss(batch):
        calls.append(len(batch))
        return (weight - 1).square().sum()

    sampler = lambda epoch, generator: (torch.arange(10),)
    assert fit_epochs(optimizer, batch_loss, sampler, epochs=5, batch_size=4, generator=torch.Generator(),
                      max_steps=5) == 5
    assert calls == [4, 4, 2, 4, 4] and weight.item() != 0
    weight.data.zero_()
    assert fit_epochs(optimizer, batch_loss, sampler, epochs=5, batch_size=4, generator=torch.Generator(),
                      max_steps=0) == 0
    assert weight.item() == 0 and len(calls) == 5


def _linear_problem():
    torch.manual_seed(0)
    inputs, targets = torch.randn(6, 3), torch.randn(6)
    weight = torch.nn.Parameter(torch.zeros(3))
    return inputs, targets, weight


def test_accumulated_batches_take_one_step_on_their_summed_gradients():
    """accumulate=2 over batches (a, b), (c, d) is two SGD steps, each on the sum of its two batches' gradients;
    the third, incomplete window's gradient stays for the next pass (PointNeXt's step_per_update)."""
    inputs, targets, weight = _linear_problem()
    loss = lambda i: (inputs[i] @ weight - targets[i]).square()
    optimizer = torch.optim.SGD([weight], lr=0.1)
    updates = []
    assert fit_batches(optimizer, range(5), loss, accumulate=2, after_update=lambda: updates.append(1)) == 2
    assert len(updates) == 2

    expected = torch.zeros(3, requires_grad=True)
    for window in ((0, 1), (2, 3)):
        grad, = torch.autograd.grad(sum((inputs[i] @ expected - targets[i]).square() for i in window), expected)
        expected = (expected - 0.1 * grad).detach().requires_grad_(True)
    torch.testing.assert_close(weight.detach(), expected.detach())
    leftover, = torch.autograd.grad((inputs[4] @ expected - targets[4]).square(), expected)
    torch.testing.assert_close(weight.grad, leftover)             # kept, not stepped and not cleared


def test_clipping_bounds_the_step_and_every_batch_is_reported():
    inputs, targets, weight = _linear_problem()
    optimizer = torch.optim.SGD([weight], lr=1.0)
    reported = []
    fit_batches(optimizer, [0], lambda i: 1e3 * (inputs[i] @ weight - targets[i]).square(), clip_norm=0.5,
                after_batch=lambda index, loss: reported.append((index, loss.item())))
    assert abs(weight.detach().norm().item() - 0.5) < 1e-5             # one step of lr 1 on a gradient of norm 0.5
    assert [index for index, _ in reported] == [0] and reported[0][1] > 0
