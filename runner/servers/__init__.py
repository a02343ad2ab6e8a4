"""Code servers: one process, warm starts from templates, starting a few at a time, cgroups,
retiring old servers, last good copies.
"""
