"""Federated fine-tuning: what the car's client, an edge node acting for a car and the
cloud's Flower server share.

- ``weights``: a package's network as a list of arrays (the order both sides agree on),
  and a federated result back into a calibrated, signed package;
- ``local``: one car's local training step (the model's own loss helpers, FedProx's
  proximal term when asked);
- ``codec``: update compression (int8 quantisation, top-k sparsification, both) with
  error feedback on the sender, and the strict decoder the server runs;
- ``check``: update validation (shapes, finite values, norm bounds, sample counts) and
  the weighted average of the updates that pass;
- ``client``: the Flower client both the car (``vehicle``) and an edge node acting for
  a car (``edge_node``) run.

Flower itself (``flwr``) is imported only by ``client`` and the cloud's server: the rest
runs, and is tested, without it.
"""
