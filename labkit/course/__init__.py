"""Course tools: releasing student notebooks, executing masters, grading submissions."""
