"""Rollout decisions: the sequential statistics, the automatic rollout's closed loop (decide,
record, apply) and the controller that runs it, and the review and plot of a rollout,
running or ended. The records they read and write (policies, outcomes, decisions) belong to
`registry`."""
