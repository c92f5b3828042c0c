"""The sans-I/O pipeline: (frame, ingress port, now) in, actions out."""
