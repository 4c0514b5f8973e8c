"""The Flower twin of federated_learning.py: the same SimpleCNN, client shares and FedAvg on Flower 1.42."""
