"""``train(..., on_epoch_end=...)``: called once per epoch with the epoch's mean loss,
and an evaluation inside it does not change training (the model is back in training
mode and the run is bit-identical to one without the callback)."""

import torch

from kfac_tutorial.experiments import build_linker, get_profile, load_tasks, prepare_task
from kfac_tutorial.linkers import ConceptInventory
from kfac_tutorial.training import evaluate, linking_batches, train


def _run(callback):
    profile = get_profile("cnn", "test")
    task = prepare_task(load_tasks(["toy-a"], profile)[0], profile)
    linker = build_linker("cnn", ConceptInventory.from_concepts(task.concepts), profile, seed=0)
    linker.begin_task(list(task.concepts))
    batches = linking_batches(linker, task.train, profile.batch_size, shuffle=True, seed=0)
    dev = linking_batches(linker, task.dev, 64)
    calls = []

    def on_epoch_end(epoch, loss):
        calls.append((epoch, loss, evaluate(linker, dev)["acc@1"]))

    history = train(linker, batches, epochs=profile.epochs, lr=profile.lr,
                    on_epoch_end=on_epoch_end if callback else None)
    return history, calls, linker


def test_on_epoch_end_sees_every_epoch_and_leaves_training_unchanged():
    history, calls, linker = _run(callback=True)
    assert [c[0] for c in calls] == list(range(len(history)))
    assert [c[1] for c in calls] == history
    assert all(0.0 <= c[2] <= 1.0 for c in calls)
    assert linker.training
    plain, _, other = _run(callback=False)
    assert plain == history
    for p, q in zip(linker.parameters(), other.parameters()):
        assert torch.equal(p, q)
