"""The autopilot model: early-exit steering CNN, baselines, training, packaging.

Modules, each for one job:

- ``preprocess``  the one definition of crop/resize/colour/normalisation (training and every runtime)
- ``nets``        the early-exit net, the PilotNet baseline and the larger edge model (the teacher)
- ``data``        a torch Dataset over driving logs, split by session (never by frame)
- ``augment``     brightness, shadows, lateral shift with steering correction, flips
- ``train``       joint loss over exits, early stopping, distillation, the training curve
- ``calibrate``   per-exit thresholds and the offload threshold, chosen on validation data
- ``compress``    int8 static quantisation (FX graph mode) and structured pruning
- ``package``     the one-file signed model package (manifest, safe weights, Ed25519)
- ``runtime``     ``Autopilot``: what the car loop and the edge node call
"""
