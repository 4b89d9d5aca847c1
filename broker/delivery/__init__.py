"""Delivery: release passes and the files organisations get (XML, CSV, zip).
"""
