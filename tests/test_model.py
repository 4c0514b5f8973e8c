import torch

from fl_tutorial.core.model import SimpleCNN


def test_parameter_count_matches_the_course_model():
    model = SimpleCNN()
    assert sum(p.numel() for p in model.parameters()) == 1715594


def test_layer_shapes():
    model = SimpleCNN()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "conv1.weight": (64, 1, 5, 5), "conv1.bias": (64,),
        "conv2.weight": (128, 64, 3, 3), "conv2.bias": (128,),
        "fc1.weight": (256, 128 * 7 * 7), "fc1.bias": (256,),
        "fc2.weight": (128, 256), "fc2.bias": (128,),
        "fc3.weight": (10, 128), "fc3.bias": (10,),
    }
    assert model.dropout.p == 0.1


def test_forward_returns_logits_for_each_image():
    model = SimpleCNN().eval()
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    # Logits, not log-probabilities: rows do not exponentiate to a distribution.
    assert not torch.allclose(out.exp().sum(dim=1), torch.ones(3), atol=1e-3)
