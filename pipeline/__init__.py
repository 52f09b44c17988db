"""llm-lifecycle orchestration: recipes, the stage runner, launching, artifacts, tracking.

No training math lives here; stages/ and reward/ hold it.
"""
__version__ = "0.1.0"
