"""The course's test(), shared by the PySyft script and the Flower twin, so that both print the same line."""
import torch
import torch.nn.functional as F


def test(model, batches, n, device):
    """Summed cross-entropy, accuracy and per-class accuracy over `batches` of (data, target), n samples in all.

    Prints the course's `Test set:` line; returns loss, accuracy, per-class accuracy.
    """
    model.eval()
    test_loss, correct, per_class, per_class_total = 0.0, 0, torch.zeros(10), torch.zeros(10)
    with torch.no_grad():
        for data, target in batches:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.cross_entropy(output, target, reduction="sum").item()
            hits = (output.argmax(dim=1) == target).cpu()
            correct += hits.sum().item()
            per_class += torch.bincount(target.cpu(), weights=hits.float(), minlength=10)
            per_class_total += torch.bincount(target.cpu(), minlength=10).float()
    test_loss /= n
    print("\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n".format(
        test_loss, correct, n, 100.0 * correct / n), flush=True)
    return test_loss, correct / n, (per_class / per_class_total.clamp(min=1)).tolist()
