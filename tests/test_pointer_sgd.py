"""pointer_sgd.SGD: torch's SGD arithmetic, half the syft messages per training step."""
import collections
import copy

import pytest
import torch
import torch.nn.functional as F

from fl_tutorial.core.model import SimpleCNN
from fl_tutorial.pysyft import pointer_sgd


def steps_on_a_client(hook, worker, optimizer_class, n_steps=4):
    """n training steps of SimpleCNN on pointers; returns the weights and the messages sent per step."""
    torch.manual_seed(0)
    model = SimpleCNN(dropout=0)
    data, target = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    optimizer = optimizer_class(model.parameters(), lr=0.1)
    model.send(worker)
    remote_data, remote_target = data.send(worker), target.send(worker)
    sent = collections.Counter()
    real_send_msg = hook.local_worker.send_msg

    def send_msg(message, location):
        sent[type(message).__name__] += 1
        return real_send_msg(message, location)

    per_step = []
    hook.local_worker.send_msg = send_msg
    try:
        for _ in range(n_steps):
            before = sum(sent.values())
            optimizer.zero_grad()
            F.cross_entropy(model(remote_data), remote_target).backward()
            optimizer.step()
            per_step.append(sum(sent.values()) - before)
    finally:
        del hook.local_worker.send_msg
    model.get()
    return copy.deepcopy(model.state_dict()), per_step, sent


def test_same_weights_as_torch_sgd_with_half_the_messages(hook, workers):
    worker = workers[0]
    torch_weights, torch_messages, _ = steps_on_a_client(hook, worker, torch.optim.SGD)
    ours, our_messages, sent = steps_on_a_client(hook, worker, pointer_sgd.SGD)
    for name in torch_weights:
        assert torch.equal(ours[name], torch_weights[name]), name
    # Once the gradients exist, zero_grad and step ask no IsNone questions.
    assert our_messages[-1] <= torch_messages[-1] - 50, (our_messages, torch_messages)


def test_local_parameters_get_torchs_own_sgd():
    torch.manual_seed(0)
    a, b = SimpleCNN(dropout=0), SimpleCNN(dropout=0)
    b.load_state_dict(a.state_dict())
    data, target = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for model, optimizer in ((a, torch.optim.SGD(a.parameters(), lr=0.1)),
                             (b, pointer_sgd.SGD(b.parameters(), lr=0.1))):
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(data), target).backward()
            optimizer.step()
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name])


def test_only_plain_sgd_is_offered():
    with pytest.raises(TypeError):
        pointer_sgd.SGD(SimpleCNN().parameters(), lr=0.1, momentum=0.9)
