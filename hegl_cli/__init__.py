"""hegl: explanation-guided training (H-EGL) of transformer chest X-ray classifiers."""

__version__ = "0.1.0"
