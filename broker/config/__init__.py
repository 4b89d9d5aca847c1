"""The operator's configuration, parsed once into frozen objects, and what is
decided from it alone: the municipality register and the (dated) routes.
"""
