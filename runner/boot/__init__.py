"""What runs inside a location's own environment (its code server, its template, its runs), by
path, with nothing of the runner importable there: these modules import only Dagster and
the standard library.
"""
