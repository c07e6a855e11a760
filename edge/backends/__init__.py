"""Inference backends behind one engine contract (base.py); heavy imports happen lazily inside each."""
