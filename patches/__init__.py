"""Changes to third-party behaviour (transformers, optimum-habana), one file each, each saying when it can go."""
