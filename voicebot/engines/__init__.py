"""Engine protocols (base.py) and one module per real backend."""
