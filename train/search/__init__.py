"""Search assist: the frame scorer that finds the described person in camera frames (issue 20)."""
