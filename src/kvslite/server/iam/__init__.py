"""Identities: IAM users, their access keys and inline policies, and the lookup that turns
a request's access key into the principal who signed it. Above the stores, beside the archive.
"""
