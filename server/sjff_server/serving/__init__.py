"""The model repository on disk and the loaded model versions (inference + learning)."""
