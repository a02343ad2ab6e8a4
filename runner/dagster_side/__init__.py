"""Talking to Dagster: workspace.yaml and its entries, publishing it to the daemon and the
webserver, the instance, failed locations shown in the UI, runs in containers.
"""
