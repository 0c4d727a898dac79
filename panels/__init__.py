"""Python panels of the faceaudit plugin (the attribute comparison panel comes with issue 4)."""
