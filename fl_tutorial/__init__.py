"""Plumbing for federated_learning.py: environment checks, MNIST files, CLI checks.

Nothing here is federated learning; the tutorial itself lives in
federated_learning.py, so that it reads top to bottom like the course.
"""
