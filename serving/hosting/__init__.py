"""Ray hosting: the Serve deployments of the replica and the rollout controller, the local
cluster of `promptmux serve`, draining, free ports, and the JSON errors of Ray's proxy."""
