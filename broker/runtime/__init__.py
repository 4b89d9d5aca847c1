"""The runtime: the daemon (the composition root) and what runs inside it.
"""
