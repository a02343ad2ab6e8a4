"""The share: which files are locations, what each one's PEP 723 block and settings say, and the
events that wake the loop.
"""
