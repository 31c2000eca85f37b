"""Training helpers: ``train(..., on_epoch_end=...)`` is called once per epoch with the
epoch's mean loss, and an evaluation inside it does not change training (the model is
back in training mode, the run is bit-identical to one without the callback); ``predict``
ranks like ``evaluate``."""

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

    history = train(linker, batches, epochs=profile.epochs, lr=profile.lr, on_epoch_end=on_epoch_end if callback else None)
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


def test_predict_agrees_with_evaluate():
    from kfac_tutorial.training import predict

    history, _, linker = _run(callback=False)
    profile = get_profile("cnn", "test")
    task = prepare_task(load_tasks(["toy-a"], profile)[0], profile)
    with linker.scoring(list(task.concepts)):
        top = predict(linker, [m for m, _ in task.dev], k=5)
        scores = evaluate(linker, linking_batches(linker, task.dev, 64))
    assert all(len(t) == 5 for t in top)
    assert all(t[0][1] >= t[-1][1] for t in top)
    hits1 = sum(t[0][0] == c for t, (_, c) in zip(top, task.dev)) / len(task.dev)
    hits5 = sum(c in [cid for cid, _ in t] for t, (_, c) in zip(top, task.dev)) / len(task.dev)
    assert abs(hits1 - scores["acc@1"]) < 1e-6 and abs(hits5 - scores["acc@5"]) < 1e-6
    assert linker.training
