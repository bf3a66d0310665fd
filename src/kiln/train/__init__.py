"""kiln.train: the one training loop (Model.fit / evaluate / predict), callbacks, precision and schedules."""
