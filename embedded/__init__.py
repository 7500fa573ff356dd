"""treegrpo.embedded: the offline default (digits, a tiny text-conditioned flow model, offline rewards)."""
