"""Layers (RNN/LSTM/GRU stacks, the embedding), losses and optimisers, built on the course and the engine."""
