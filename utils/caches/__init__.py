"""`python main.py cache`: build the decoded-image caches a run will read (data/image_cache.py)
ahead of time, list them with their sizes, or remove them."""
