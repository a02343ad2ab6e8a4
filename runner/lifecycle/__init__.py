"""What the runner holds (the model, plain data with no Dagster in it) and what happens to a
location next (pure decisions).
"""
