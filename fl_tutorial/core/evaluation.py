"""The course's test result, kept in one place: the script's test() and the Flower twin's add to a Score.

Each keeps its own loop over its test batches (plain PyTorch, readable where it runs); the sums,
the per-class accuracy and the printed `Test set:` line are the same for both.
"""
import torch
import torch.nn.functional as F


class Score:
    """Summed cross-entropy and hits, overall and per digit, over the batches added."""

    def __init__(self):
        self.loss, self.correct, self.n = 0.0, 0, 0
        self.per_class, self.per_class_total = torch.zeros(10), torch.zeros(10)

    def add(self, output, target):
        """One batch: the model's logits and the true labels."""
        self.loss += F.cross_entropy(output, target, reduction="sum").item()
        hits = (output.argmax(dim=1) == target).cpu()
        self.correct += hits.sum().item()
        self.n += len(target)
        self.per_class += torch.bincount(target.cpu(), weights=hits.float(), minlength=10)
        self.per_class_total += torch.bincount(target.cpu(), minlength=10).float()

    def report(self):
        """Prints the course's `Test set:` line; returns the mean loss, the accuracy and the per-class accuracy."""
        loss = self.loss / self.n
        print("\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n".format(
            loss, self.correct, self.n, 100.0 * self.correct / self.n), flush=True)
        return loss, self.correct / self.n, (self.per_class / self.per_class_total.clamp(min=1)).tolist()
