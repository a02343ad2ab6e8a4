"""Who each location runs as, and what it may touch on this machine: users, permissions, the
service's ports, the right to fork into other users.
"""
