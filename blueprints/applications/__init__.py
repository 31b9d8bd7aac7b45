from blueprints.applications.resources import blp

__all__ = ["blp"]
