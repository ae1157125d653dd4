"""TotalSegmentator tasks as catalog models: cards (tasks.py), pulling (pull.py), running (predictor.py)."""
