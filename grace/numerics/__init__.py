"""Checks on numbers that every stage shares: a non-finite value found where it first appears, and named.

``errors`` holds ``NonFiniteError`` without importing torch (command-line error handling reads it); ``finite``
locates NaN and infinite values in tensors.
"""
