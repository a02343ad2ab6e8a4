"""The service: the command line, its settings, the reconcile loop, the lease, status and the stop
of everything at exit.
"""
