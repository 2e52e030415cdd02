"""Array namespaces (NumPy, CuPy, PyTorch, array-api-strict) and the argument checks every layer above uses."""
