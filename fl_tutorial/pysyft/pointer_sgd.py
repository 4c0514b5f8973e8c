"""torch.optim.SGD with the same arithmetic, asking a client fewer questions.

torch's `zero_grad()` and `step()` check `p.grad is not None` three times and
twice per parameter. For a parameter on a client each check is a syft message
(IsNoneMessage, a round trip over a websocket): 50 of the 142 messages of a
SimpleCNN training step. A gradient, once it exists, stays: `zero_grad()`
zeroes it in place and `backward()` adds into it. So once a client's gradient is
known to exist, this optimizer uses it without asking again, until the model
moves (a new pointer). The arithmetic is torch's: `grad.zero_()` and
`p.data.add_(-lr, grad)`; only `detach_()`, a no-op on a gradient without
history, is left out after the first step. Local parameters get torch's own code.

With FedProx (`--prox-mu`), each step also pulls the weights towards the
round's start (its anchor): `update()` below, the same arithmetic on the
coordinator's pointers and on a client that trains itself (client_training.py).
"""
import torch


def update(p, grad, lr, prox_mu=0.0, anchor=None):
    """One parameter's SGD step, in place: p -= lr * grad; with FedProx's proximal term (mu/2)·||p - anchor||²
    (Li et al. 2020) its gradient mu·(p - anchor) joins grad first.

    Only add_ runs, in place: on a client each call is one message, and add_ is all a worker needs to
    take. With prox_mu 0 the step is plain SGD's, to the last bit (FedAvg).
    """
    if prox_mu:
        grad.add_(prox_mu, p)
        grad.add_(-prox_mu, anchor)
    p.add_(-lr, grad)


class SGD(torch.optim.SGD):
    """Plain SGD (no momentum, no weight decay), as the course uses."""

    def __init__(self, params, lr, prox_mu=0.0):
        super().__init__(params, lr=lr)
        self.prox_mu = prox_mu
        self._known = {}  # id(parameter) -> (its pointer, the pointer to its gradient)
        self._anchors = {}  # id(parameter) -> the round's start of it, where it trains (FedProx)

    def anchor(self, anchors):
        """FedProx: the round's weights, one tensor (or pointer, on the parameter's client) per parameter."""
        params = [p for group in self.param_groups for p in group["params"]]
        self._anchors = {id(p): a for p, a in zip(params, anchors)}

    @staticmethod
    def _pointer(p):
        child = getattr(p, "child", None)
        return child if type(child).__name__ == "PointerTensor" else None

    def _known_grad(self, p):
        """The gradient of a parameter on a client, if already known to exist there; else None."""
        pointer = self._pointer(p)
        known = self._known.get(id(p))
        return known[1] if pointer is not None and known is not None and known[0] is pointer else None

    def _grad(self, p):
        """p's gradient (None if it has none), asking the client only until it is known to exist."""
        grad = self._known_grad(p)
        if grad is None:
            grad = p.grad
            pointer = self._pointer(p)
            if grad is not None and pointer is not None:
                self._known[id(p)] = (pointer, grad)
        return grad

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                grad = self._known_grad(p)
                if grad is not None:
                    grad.zero_()
                elif p.grad is not None:  # torch's own zero_grad
                    p.grad.detach_()
                    p.grad.zero_()

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                grad = self._grad(p)
                if grad is not None:
                    update(p.data, grad.data, group["lr"], self.prox_mu, self._anchors.get(id(p)))
        return loss
