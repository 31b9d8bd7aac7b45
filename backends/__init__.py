"""Built-in backends, each registered in the `ovas.backends` entry-point group."""
