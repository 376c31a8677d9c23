"""Data parallelism: the cluster from the environment, gathers with gradients, gradient reduction."""
