"""What a Kit app may write in its log, for the backends' log tests."""

# Characters `str.splitlines` takes for line ends, which a container may write inside a line:
# a log line is cut at newlines only.
ODD = "a\rb\vc\fd\x1ce\x1df\x1eg\x85h\u2028i\u2029j"
