"""Files the service keeps besides the database: the kept images."""
