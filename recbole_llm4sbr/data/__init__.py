"""Session data: the RecBole dataset class, the stage-1 bridge and raw-data converters."""
