"""Broker administration: topics and their checks, durability, security, ACLs, KRaft."""
