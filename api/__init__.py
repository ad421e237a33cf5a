"""HTTP routes, one module per resource; `main.py` assembles them."""
