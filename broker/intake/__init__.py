"""Intake: decision batches from Kela, read streaming (or on every core), checked
against the XSDs and the business rules, and stored.
"""
