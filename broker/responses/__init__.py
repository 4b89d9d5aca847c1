"""Responses: what organisations upload, checked and answered with an
acknowledgement; accepted content forwarded to Kela.
"""
