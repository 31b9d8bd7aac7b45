from blueprints.streaming.resources import blp

__all__ = ["blp"]
