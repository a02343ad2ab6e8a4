"""A file's environment: built by uv from a lock, one per distinct metadata, with the Pythons it
may use and why a build failed.
"""
