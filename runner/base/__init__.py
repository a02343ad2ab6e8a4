"""What every layer uses: where things live, files written atomically, child processes we own,
metrics. Imports nothing of the runner.
"""
