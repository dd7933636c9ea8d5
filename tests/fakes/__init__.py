"""Test servers that speak real APIs (Docker Engine, Kubernetes) on loopback or unix sockets."""
