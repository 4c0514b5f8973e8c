"""The tutorial's model, plain PyTorch: the same class for the PySyft script and the Flower twin.

It runs on torch 1.4 (syft 0.2.6, where it also works on remote pointers) and on
torch 2.x (flower/), so that a state_dict saved by one loads into the other.
"""
import torch.nn as nn


class SimpleCNN(nn.Module):
    """Two conv blocks and three dense layers; returns logits (1,715,594 parameters with the defaults)."""

    def __init__(self, conv1_channels=64, conv2_channels=128, linear1_size=256, linear2_size=128, dropout=0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(1, conv1_channels, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(conv1_channels, conv2_channels, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()  # works on pointers; x.view(x.size(0), -1) does not
        self.fc1 = nn.Linear(conv2_channels * 7 * 7, linear1_size)
        self.fc2 = nn.Linear(linear1_size, linear2_size)
        self.fc3 = nn.Linear(linear2_size, 10)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))  # 28x28 -> 14x14
        x = self.pool(self.relu(self.conv2(x)))  # 14x14 -> 7x7
        x = self.flatten(x)
        x = self.dropout(self.relu(self.fc1(x)))
        x = self.dropout(self.relu(self.fc2(x)))
        return self.fc3(x)

