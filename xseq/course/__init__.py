"""The course's cells, whole-sequence functions and parameter dictionaries, with the course's names and shapes."""
