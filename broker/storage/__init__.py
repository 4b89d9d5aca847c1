"""Storage: the state database (every table and statement), the audit trail, bans,
and the files the broker keeps (atomic writes, names, digests).
"""
