"""What readers get: the brief, its charts, and its delivery by email and notification."""
