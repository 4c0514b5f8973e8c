"""The script's flags and every mode beyond the course, composed from the script's own steps.

options.py: the flags the course never had and the one frozen Settings; preflight.py: what would
fail later fails now; owners.py: steps 1 and 2 for every mode; fedavg.py: a FedAvg round;
modes.py: the run.
"""
