"""The anthropic provider (SDK 1.x and 2.x): Messages streams, plain and beta.

The second implementation of the provider contract (``providers/base.py``).
"""
