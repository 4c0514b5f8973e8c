"""`python -m fl_tutorial.worker`: a client in its own process (the data owner's side, fl_tutorial/remote/worker.py)."""
