"""Safe XML: the one parser policy (no DTDs, entities, network) and the schemas'
messages, shared by intake and responses.
"""
