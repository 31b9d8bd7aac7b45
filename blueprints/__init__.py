"""The web layer: one flask-smorest Blueprint per OVAS service, plus health and docs assets."""
