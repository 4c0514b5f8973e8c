"""How the server gets the average of the clients' updates without trusting more than it must.

aggregation.py: server, trusted (Part 04) and secure (Part 10) aggregation over syft's own
objects; peer_sum.py: secure and trusted sums across client processes; dp.py: DP-FedAvg's
clipping, noise and privacy accounting; fixed_point.py: the ring both secure sums use. It
works on tensors and on the clients it is handed, and imports nothing above core/.
"""
