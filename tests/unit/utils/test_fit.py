import torch

from openpoints_dd.utils.fit import fit_epochs


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
