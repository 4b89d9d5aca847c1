"""The domain: types, identity codes, timing and stagger rules, the settle rule.

Pure: no I/O, no SQLAlchemy, no lxml; functions take ``now`` as a parameter.
"""
